"""Connecting a Keel process to NATS: identity, private inbox prefix, reconnect forever, errors counted."""

from typing import Any

import nats
from faststream.nats import NatsBroker
from nats.aio.client import Client

from keel_shared.logging import get_logger
from keel_shared.metrics import NATS_ERRORS
from keel_shared.settings import KeelSettings

log = get_logger(__name__)


def inbox_prefix(service: str) -> str:
    """A private inbox per service, so its permissions need not include everyone's `_INBOX.>`."""
    return f"_INBOX_{service}"


def connect_options(settings: KeelSettings, service: str) -> dict[str, Any]:
    async def on_error(exc: Exception) -> None:
        # Permission violations surface only here (the publish itself just times out), so count them.
        NATS_ERRORS.labels(service).inc()
        log.warning("nats_error", error=str(exc))

    async def on_disconnect() -> None:
        log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    opts: dict[str, Any] = {
        "servers": [u.strip() for u in settings.nats_url.split(",") if u.strip()],
        "name": f"keel-{service}",
        "inbox_prefix": inbox_prefix(service),
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "connect_timeout": 5,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    if settings.nats_nkey_seed_file is not None:
        opts["nkeys_seed"] = str(settings.nats_nkey_seed_file)
    if settings.nats_user is not None:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password
    return opts


async def connect(settings: KeelSettings, service: str, *, retry_initial: bool = True, quiet: bool = False) -> Client:
    """A raw nats-py connection. `quiet` is for short-lived admin/CLI connections, where a
    disconnect at close is expected and not worth a log line."""
    opts = connect_options(settings, service)
    if quiet:
        for callback in ("disconnected_cb", "reconnected_cb"):
            opts.pop(callback)
    # Without this a process started before the server gives up at once instead of waiting for it.
    opts["allow_reconnect"] = True
    if retry_initial:
        opts["max_reconnect_attempts"] = -1
    return await nats.connect(**opts)


def make_broker(settings: KeelSettings, service: str, graceful_timeout: float = 30.0) -> NatsBroker:
    opts = connect_options(settings, service)
    servers = opts.pop("servers")
    # No dependency injection: every subscriber decodes its typed argument itself (ServiceRuntime's
    # `decode`), which costs a fraction of FastStream's per-message argument resolution.
    return NatsBroker(servers, graceful_timeout=graceful_timeout, logger=None, apply_types=False, **opts)
