"""Server-sent events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""

import json
from typing import Any

#: How long a browser waits before reconnecting after the stream drops (milliseconds).
RETRY_MS = 1000


def frame(data: Any, *, event: str | None = None, id: int | str | None = None) -> bytes:
    """One event. The JSON has no raw newlines (json.dumps escapes them), so it is a single data line."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str = "keep-alive") -> bytes:
    """A comment line: keeps proxies from closing an idle stream and lets the server notice a gone client."""
    return f": {text}\n\n".encode()


def retry(ms: int = RETRY_MS) -> bytes:
    return f"retry: {ms}\n\n".encode()
