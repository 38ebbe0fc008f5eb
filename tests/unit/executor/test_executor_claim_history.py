"""What a claim remembers: its past holders and errors (for a dead letter) and its outcome (to re-report)."""

from __future__ import annotations

import json

from keel_executor.claims import MAX_HISTORY, _value, describe_claim


def doc(raw: bytes) -> dict:
    return json.loads(raw)


def test_each_state_keeps_the_ones_before_it_without_their_outcomes():
    first = doc(_value("running", "ex-1"))
    failed = doc(_value("running", "ex-1", first, error="TimeoutError: publish timed out"))
    taken = doc(_value("running", "ex-2", failed, took_over_from="ex-1"))

    assert [h["holder"] for h in taken["history"]] == ["ex-1", "ex-1"]
    assert taken["history"][1]["error"] == "TimeoutError: publish timed out"
    assert "history" not in taken["history"][1]  # flat: no nesting

    text = describe_claim(taken)
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("running by ex-1")
    assert lines[1].endswith("running by ex-1: TimeoutError: publish timed out")
    assert lines[2].endswith("running by ex-2 (took over from ex-1)")


def test_history_is_bounded():
    value = doc(_value("running", "ex-0"))
    for n in range(MAX_HISTORY + 10):
        value = doc(_value("running", f"ex-{n + 1}", value, took_over_from=f"ex-{n}"))

    assert len(value["history"]) == MAX_HISTORY
    assert value["history"][-1]["holder"] == f"ex-{MAX_HISTORY + 9}"
