"""One stack of every Keel service for all bad-input tests: the garbage is thrown at it in bulk, so starting
it once keeps the suite short. Tests that break nothing share it; each uses its own runs and ids."""

import asyncio
import json
from collections.abc import Iterator

import pytest

from keel_shared.natsserver import NatsServer
from tests.badinput.kit import SLACK_SECRET, WEBHOOK_SECRET, BadInputStack
from tests.badinput.strategies import SERVICE_MAX_BYTES
from tests.conftest import ALL_SERVICES, start_stack
from tests.integration.approval_support import add_approvers


@pytest.fixture(scope="session")
def badinput_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadInputStack]:
    root = tmp_path_factory.mktemp("badinput")
    server = NatsServer(root / "nats")
    server.start()
    sources = root / "sources.json"
    sources.write_text(json.dumps({"orders": {"intent_key": "body:order.id", "input_path": "order"}}))
    env = {
        # The services refuse more than the streams store, so an oversize message reaches a service and
        # its own size check is exercised too (the streams' limit is checked by the server on publish).
        "KEEL_MAX_MESSAGE_BYTES": str(SERVICE_MAX_BYTES),
        "KEEL_INGRESS_SOURCES_FILE": str(sources),
        "KEEL_WEBHOOK_SECRET_GENERIC": WEBHOOK_SECRET,
        "KEEL_WEBHOOK_SECRET_ORDERS": WEBHOOK_SECRET,
        "KEEL_WEBHOOK_SECRET_SLACK": SLACK_SECRET,
        # Audit seals often, so a test can see it has recorded everything up to now.
        "KEEL_AUDIT_SEGMENT_MAX_AGE_SECONDS": "1",
        # Hundreds of hostile requests carry wrong tokens from one client: this suite checks how each is
        # answered, so guessing is not throttled here (tests/unit/approval/test_approval_guessing.py is).
        "KEEL_APPROVAL_MAX_FAILED_LOGINS": "1000000",
    }
    try:
        handle = asyncio.run(start_stack(root, root / "stack", server.url, services=ALL_SERVICES, env=env))
    except BaseException:
        server.stop()
        raise
    try:
        tokens = add_approvers(f"sqlite:///{handle.data_dir / 'approvals.db'}", fiona=["finance"], olga=["ops"])
        yield BadInputStack(handle, tokens)
    finally:
        handle.stack.stop(10)
        server.stop()
