"""A small client of the approval HTTP API (used by the `keel approve/deny/approvals` commands), and
the local token file that lets `--as USER` pick a token on a developer's machine."""

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

TOKEN_FILE = "approver-tokens.json"  # noqa: S105 - a file name
DEFAULT_URL = "http://127.0.0.1:8420"


class ApprovalApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}" if code else detail)
        self.status = status
        self.code = code
        self.detail = detail


class TokenNotFound(Exception):
    pass


def token_file(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def save_token(data_dir: Path, name: str, token: str) -> Path:
    """Keep an approver's token for `--as NAME` on this machine (mode 0600, like ~/.netrc). The store
    keeps only its hash; this file is the user's own copy, and `--no-save` skips it."""
    path = token_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = load_tokens(data_dir)
    tokens[name] = token
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(tokens, out, indent=2, sort_keys=True)
    partial.replace(path)
    return path


def load_tokens(data_dir: Path) -> dict[str, str]:
    path = token_file(data_dir)
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def resolve_token(token: str | None, as_user: str | None, data_dir: Path) -> str:
    """`--token` (or KEEL_APPROVER_TOKEN) wins; otherwise `--as USER` looks the token up locally."""
    if token:
        return token
    if as_user:
        found = load_tokens(data_dir).get(as_user)
        if found:
            return found
        raise TokenNotFound(
            f"no token for {as_user} in {token_file(data_dir)}: pass --token (or set KEEL_APPROVER_TOKEN), "
            f"or create the approver on this machine with `keel approvers add {as_user} --role ROLE`"
        )
    raise TokenNotFound("say who decides: --as USER, or --token / KEEL_APPROVER_TOKEN")


class ApprovalClient:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def __enter__(self) -> "ApprovalClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: str) -> Any:
        try:
            response = self._http.request(method, path, json=body, params=params or None)
        except httpx.HTTPError as exc:
            raise ApprovalApiError(0, "unreachable", f"approval service at {self._http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                doc = response.json()
            except ValueError:
                doc = {}
            code = str(doc.get("error", "")) if isinstance(doc, dict) else ""
            detail = doc.get("detail") if isinstance(doc, dict) else None
            raise ApprovalApiError(response.status_code, code or f"http_{response.status_code}", str(detail or ""))
        return response.json()

    @staticmethod
    def _path(approval_id: str) -> str:
        return "/api/v1/approvals/" + quote(approval_id, safe="")

    def me(self) -> dict[str, Any]:
        return dict(self._call("GET", "/api/v1/me"))

    def list(self, status: str = "pending") -> dict[str, Any]:
        return dict(self._call("GET", "/api/v1/approvals", status=status))

    def get(self, approval_id: str) -> dict[str, Any]:
        return dict(self._call("GET", self._path(approval_id)))

    def approve(self, approval_id: str, payload_hash: str, reason: str = "", role: str | None = None) -> dict[str, Any]:
        body = {"payload_hash": payload_hash, "reason": reason, "role": role}
        return dict(self._call("POST", self._path(approval_id) + "/approve", body))

    def deny(self, approval_id: str, payload_hash: str, reason: str, role: str | None = None) -> dict[str, Any]:
        body = {"payload_hash": payload_hash, "reason": reason, "role": role}
        return dict(self._call("POST", self._path(approval_id) + "/deny", body))
