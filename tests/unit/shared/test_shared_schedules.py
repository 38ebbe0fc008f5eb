"""The router signs every write it schedules; an executor believes a scheduled write only when that
signature verifies (keel_shared.schedules, decision 026)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel_contracts.codec import decode_event, encode
from keel_contracts.events import RunStarted, RunStartedBody, StepScheduled, StepScheduledBody
from keel_shared import keyrings, schedules
from keel_shared.settings import KeelSettings
from keel_shared.signing import Signer

ENV = {"run_id": "r1", "workflow": "refund", "correlation_id": "c1", "actor": "router"}
ROUTER = Signer.generate()
TRUSTED = keyrings.trusting(schedules.PURPOSE, ROUTER)


def step(side_effect: str = "write", **body: object) -> StepScheduled:
    fields: dict[str, object] = {
        "tool": "billing.refund",
        "input": {"charge_id": "ch_1", "amount": 12.5, "note": "é"},
        "idempotency_key": "k",
        "command_id": "r1:refund:1:1",
        "timeout_seconds": 5,
        "reason": "approved",
        "side_effect": side_effect,
        **body,
    }
    return StepScheduled(**ENV, step_id="refund", attempt=1, dedupe_key="d", body=StepScheduledBody(**fields))


def test_a_signed_write_still_verifies_after_a_trip_through_the_stream() -> None:
    stored = decode_event(encode(schedules.sign_schedule(ROUTER, step())))
    assert isinstance(stored, StepScheduled)
    assert schedules.schedule_problem(TRUSTED, stored) is None


def test_a_write_without_a_signature_or_altered_after_signing_is_not_believed() -> None:
    assert "no router signature" in (schedules.schedule_problem(TRUSTED, step()) or "")
    signed = schedules.sign_schedule(ROUTER, step())
    bigger = signed.model_copy(update={"body": signed.body.model_copy(update={"input": {"amount": 99999}})})
    assert "does not verify" in (schedules.schedule_problem(TRUSTED, bigger) or "")
    other_step = signed.model_copy(update={"step_id": "other"})
    assert "does not verify" in (schedules.schedule_problem(TRUSTED, other_step) or "")
    elsewhere = schedules.sign_schedule(Signer.generate(), step())
    assert "does not hold" in (schedules.schedule_problem(TRUSTED, elsewhere) or "")


def test_reads_go_unsigned_and_need_no_signature() -> None:
    (read,) = schedules.signed_writes(ROUTER, [step("read")])
    assert isinstance(read, StepScheduled) and read.body.signature is None
    assert schedules.schedule_problem(TRUSTED, read) is None


def test_a_start_carrying_a_write_as_its_first_step_carries_it_signed() -> None:
    start = RunStarted(
        **ENV,
        dedupe_key="s",
        body=RunStartedBody(intent_key="i", source="cli", trigger_id="t", input={}, first_step=step()),
    )
    (signed,) = schedules.signed_writes(ROUTER, [start])
    assert isinstance(signed, RunStarted) and signed.body.first_step is not None
    assert schedules.schedule_problem(TRUSTED, signed.body.first_step) is None


def test_a_retired_key_verifies_what_it_signed_before_and_nothing_after(tmp_path: Path) -> None:
    settings = KeelSettings(data_dir=tmp_path)
    first = schedules.KEYS.ensure(settings)
    before = schedules.sign_schedule(first, step())
    old, new = schedules.KEYS.rotate(settings)
    assert old == first.key_id and new != old
    ring = keyrings.load_keyring(schedules.KEYS.keyring_path(settings), schedules.PURPOSE)
    assert schedules.schedule_problem(ring, before) is None
    late = step().model_copy(update={"occurred_at": datetime.now(UTC) + timedelta(minutes=1)})
    assert "after it was retired" in (schedules.schedule_problem(ring, schedules.sign_schedule(first, late)) or "")
    assert schedules.schedule_problem(ring, schedules.sign_schedule(schedules.KEYS.ensure(settings), step())) is None


def test_a_keyring_of_another_purpose_is_refused(tmp_path: Path) -> None:
    settings = KeelSettings(data_dir=tmp_path)
    schedules.KEYS.ensure(settings)
    with pytest.raises(keyrings.KeyringError, match="keel-approval-decisions"):
        keyrings.load_keyring(schedules.KEYS.keyring_path(settings), "keel-approval-decisions")


def test_each_signers_key_and_keyring_follow_their_settings(tmp_path: Path) -> None:
    from keel_shared import decisions

    for keys in (decisions.KEYS, schedules.KEYS):
        assert {keys.key_setting, keys.keyring_setting} <= set(KeelSettings.model_fields)
        defaults = KeelSettings(data_dir=tmp_path)
        assert keys.key_path(defaults).parent == keys.keyring_path(defaults).parent == tmp_path / "keys"
        moved = KeelSettings(
            data_dir=tmp_path, **{keys.key_setting: tmp_path / "k", keys.keyring_setting: tmp_path / "r"}
        )
        assert (keys.key_path(moved), keys.keyring_path(moved)) == (tmp_path / "k", tmp_path / "r")
