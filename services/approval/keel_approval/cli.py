"""`keel approvals ...`, `keel approvers ...`, `keel approve` and `keel deny`.

Deciding goes through the HTTP API with an approver token, exactly as the inbox does, so the CLI gets
no power the inbox lacks. Managing approvers (`keel approvers add/rotate/disable/list`) and `keel
approvals rebuild` are admin steps that open the store directly (`--db-url`, else SQLite in
`--data-dir`).
"""

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from keel_approval.approvers import ApproverDirectory, ApproverError
from keel_approval.client import (
    DEFAULT_URL,
    ApprovalApiError,
    ApprovalClient,
    TokenNotFound,
    resolve_token,
    save_token,
)
from keel_approval.db import Database, database_url
from keel_approval.store import ApprovalStore
from keel_approval.stream import read_approval_events
from keel_contracts import subjects as s
from keel_shared.connection import connect
from keel_shared.eventstore import EventStore
from keel_shared.settings import DEFAULT_NATS_URL, KeelSettings

T = TypeVar("T")

approvals_app = typer.Typer(help="List, inspect and rebuild approvals.", no_args_is_help=True)
approvers_app = typer.Typer(help="Manage approvers: names, roles and API tokens.", no_args_is_help=True)

Url = Annotated[str, typer.Option("--url", envvar="KEEL_APPROVAL_URL", help="Approval service URL.")]
Token = Annotated[
    str | None, typer.Option("--token", envvar="KEEL_APPROVER_TOKEN", help="Approver API token.", show_default=False)
]
As = Annotated[
    str | None,
    typer.Option("--as", help="Decide as this approver (token from the local token file unless --token)."),
]
DataDir = Annotated[Path, typer.Option("--data-dir", envvar="KEEL_DATA_DIR", help="Keel data directory.")]
DbUrl = Annotated[
    str | None, typer.Option("--db-url", envvar="KEEL_APPROVAL_DB_URL", help="Approval store URL (default: SQLite).")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def _emit(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _client(url: str, token: str | None, as_user: str | None, data_dir: Path) -> ApprovalClient:
    try:
        client = ApprovalClient(url, resolve_token(token, as_user, data_dir))
    except TokenNotFound as exc:
        raise _fail(str(exc), 2) from None
    if as_user:
        # --as names who the caller means to be; the token decides who they are. Refuse a mismatch
        # rather than decide under a name the caller did not intend.
        who = _api(client.me)["name"]
        if who != as_user:
            raise _fail(f"the token belongs to {who}, not {as_user}", 2)
    return client


def _api(call: Callable[[], T]) -> T:
    try:
        return call()
    except ApprovalApiError as exc:
        raise _fail(str(exc)) from None


def _directory(db_url: str | None, data_dir: Path) -> ApproverDirectory:
    db = Database(database_url(KeelSettings(data_dir=data_dir, approval_db_url=db_url)))
    db.migrate()
    return ApproverDirectory(db, lambda: datetime.now(UTC))


def _line(a: dict[str, Any]) -> str:
    quorum = f" {a['approvals']}/{a['quorum']}" if a["quorum"] > 1 else ""
    return (
        f"{a['approval_id']}  {a['status']:<10} {','.join(a['roles'])}{quorum}  {a['target']['system']}."
        f"{a['target']['operation']}  run {a['run_id']}  by {a['requested_by']}  expires {a['expires_at']}\n"
        f"    {a['summary'][:160]}"
    )


# --- approvals -----------------------------------------------------------------------------------------
@approvals_app.command("list")
def approvals_list(
    status: Annotated[str, typer.Option(help="pending, settled or all.")] = "pending",
    as_json: JsonFlag = False,
    as_user: As = None,
    token: Token = None,
    url: Url = DEFAULT_URL,
    data_dir: DataDir = Path(".keel"),
) -> None:
    """Approvals for the caller's roles (pending by default)."""
    if status not in ("pending", "settled", "all"):
        raise _fail("--status must be pending, settled or all", 2)
    with _client(url, token, as_user, data_dir) as client:
        doc = _api(lambda: client.list(status))
    if as_json:
        _emit(doc)
        return
    for a in doc["approvals"]:
        typer.echo(_line(a))
    if not doc["approvals"]:
        typer.echo(f"no {status if status != 'all' else ''} approvals for {doc['approver']['name']}".replace("  ", " "))


@approvals_app.command("show")
def approvals_show(
    approval_id: Annotated[str, typer.Argument(help="Approval id.")],
    as_json: JsonFlag = False,
    as_user: As = None,
    token: Token = None,
    url: Url = DEFAULT_URL,
    data_dir: DataDir = Path(".keel"),
) -> None:
    """One approval: payload, diff, target, evidence and history."""
    with _client(url, token, as_user, data_dir) as client:
        doc = _api(lambda: client.get(approval_id))
    if as_json:
        _emit(doc)
        return
    typer.echo(_line(doc))
    target = doc["target"]
    typer.echo(
        f"target: {target['system']} {target['operation']} {target.get('record') or ''} {target.get('link') or ''}"
    )
    typer.echo(f"why: {doc['reason']}")
    typer.echo(f"payload ({doc['payload_hash']}):\n{json.dumps(doc['payload'], indent=2, sort_keys=True)}")
    for line in doc["diff"]:
        if line["change"] != "unchanged":
            typer.echo(f"  {line['change']:<8} {line['path']}: {line['before']!r} -> {line['after']!r}")
    if doc["evidence"]:
        typer.echo(f"evidence:\n{json.dumps(doc['evidence'], indent=2, sort_keys=True)}")
    for h in doc["history"]:
        typer.echo(f"  {h['at']}  {h['what']:<20} {h['who']}  {h['why']}")


@approvals_app.command("rebuild")
def approvals_rebuild(
    nats_url: Annotated[str, typer.Option("--nats-url", envvar="KEEL_NATS_URL")] = DEFAULT_NATS_URL,
    db_url: DbUrl = None,
    data_dir: DataDir = Path(".keel"),
) -> None:
    """Rebuild the approval store from the event stream (requests and decisions)."""

    async def go() -> int:
        settings = KeelSettings(nats_url=nats_url, data_dir=data_dir, approval_db_url=db_url)
        db = Database(database_url(settings))
        await asyncio.to_thread(db.migrate)
        nc = await connect(settings, "admin", retry_initial=False, quiet=True)
        try:
            events = await read_approval_events(EventStore(nc, nc.jetstream(), s.APPROVAL), settings.max_message_bytes)
        finally:
            await nc.close()
        store = ApprovalStore(db, lambda: datetime.now(UTC))
        applied = await asyncio.to_thread(store.replay, events, wipe=True)
        db.dispose()
        return applied

    try:
        applied = asyncio.run(go())
    except OSError as exc:
        raise _fail(f"cannot rebuild: {exc}") from None
    typer.echo(f"rebuilt the approval store: {applied} events applied")


# --- deciding ------------------------------------------------------------------------------------------
def approve(
    approval_id: Annotated[str, typer.Argument(help="Approval id.")],
    as_user: As = None,
    reason: Annotated[str, typer.Option("--reason", help="Optional note.")] = "",
    role: Annotated[str | None, typer.Option("--role", help="Approve as this of my roles.")] = None,
    expect_hash: Annotated[
        str | None, typer.Option("--hash", help="Only approve if the payload hash is this (default: as shown now).")
    ] = None,
    as_json: JsonFlag = False,
    token: Token = None,
    url: Url = DEFAULT_URL,
    data_dir: DataDir = Path(".keel"),
) -> None:
    """Approve the exact payload of an approval request."""
    with _client(url, token, as_user, data_dir) as client:
        doc = _api(lambda: client.get(approval_id))
        payload_hash = expect_hash or doc["payload_hash"]
        result = _api(lambda: client.approve(approval_id, payload_hash, reason, role))
    if as_json:
        _emit(result)
        return
    if result["settled"]:
        typer.echo(f"approved {approval_id} ({result['payload_hash']}) by {', '.join(result['decided_by'])}")
    else:
        typer.echo(f"approval recorded for {approval_id}: {result['approvals']} so far, more are needed")


def deny(
    approval_id: Annotated[str, typer.Argument(help="Approval id.")],
    reason: Annotated[str, typer.Option("--reason", help="Why not (required).")],
    as_user: As = None,
    role: Annotated[str | None, typer.Option("--role", help="Deny as this of my roles.")] = None,
    as_json: JsonFlag = False,
    token: Token = None,
    url: Url = DEFAULT_URL,
    data_dir: DataDir = Path(".keel"),
) -> None:
    """Deny an approval request, with a reason."""
    if not reason.strip():
        raise _fail("a denial needs a reason (--reason)", 2)
    with _client(url, token, as_user, data_dir) as client:
        doc = _api(lambda: client.get(approval_id))
        result = _api(lambda: client.deny(approval_id, doc["payload_hash"], reason, role))
    if as_json:
        _emit(result)
        return
    typer.echo(f"denied {approval_id}: {reason}")


# --- approvers -----------------------------------------------------------------------------------------
@approvers_app.command("add")
def approvers_add(
    name: Annotated[str, typer.Argument(help="Approver name (their identity in decisions).")],
    role: Annotated[list[str], typer.Option("--role", help="A role (repeat for several).")],
    save: Annotated[
        bool, typer.Option(help="Also keep the token in <data-dir>/approver-tokens.json for `--as NAME`.")
    ] = True,
    db_url: DbUrl = None,
    data_dir: DataDir = Path(".keel"),
) -> None:
    """Create an approver and print its API token (shown this once; only its hash is stored)."""
    try:
        token = _directory(db_url, data_dir).add(name, role)
    except ApproverError as exc:
        raise _fail(str(exc), 2) from None
    typer.echo(f"approver {name} ({', '.join(sorted(set(role)))}) created. Token (shown once):")
    typer.echo(token)
    if save:
        typer.echo(f"saved for `--as {name}` in {save_token(data_dir, name, token)}", err=True)


@approvers_app.command("rotate")
def approvers_rotate(
    name: Annotated[str, typer.Argument()],
    save: Annotated[bool, typer.Option(help="Also update the local token file.")] = True,
    db_url: DbUrl = None,
    data_dir: DataDir = Path(".keel"),
) -> None:
    """Issue a new token for an approver; the old token and its sessions stop working."""
    try:
        token = _directory(db_url, data_dir).rotate(name)
    except ApproverError as exc:
        raise _fail(str(exc), 2) from None
    typer.echo(token)
    if save:
        save_token(data_dir, name, token)


@approvers_app.command("disable")
def approvers_disable(
    name: Annotated[str, typer.Argument()], db_url: DbUrl = None, data_dir: DataDir = Path(".keel")
) -> None:
    """Disable an approver: their token and sessions stop working; their past decisions stay."""
    try:
        _directory(db_url, data_dir).disable(name)
    except ApproverError as exc:
        raise _fail(str(exc), 2) from None
    typer.echo(f"approver {name} disabled")


@approvers_app.command("list")
def approvers_list(as_json: JsonFlag = False, db_url: DbUrl = None, data_dir: DataDir = Path(".keel")) -> None:
    """Approvers and their roles (never their tokens)."""
    rows = _directory(db_url, data_dir).all()
    if as_json:
        _emit({"approvers": [{"name": r.name, "roles": list(r.roles), "active": r.active} for r in rows]})
        return
    for r in rows:
        typer.echo(f"{r.name:<24} {', '.join(r.roles):<30} {'active' if r.active else 'disabled'}")
    if not rows:
        typer.echo("no approvers")


def mount(app: typer.Typer) -> None:
    """Add the approval commands to the `keel` CLI."""
    app.add_typer(approvals_app, name="approvals")
    app.add_typer(approvers_app, name="approvers")
    app.command("approve")(approve)
    app.command("deny")(deny)
