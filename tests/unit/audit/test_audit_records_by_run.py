"""`records_by_run` reconstructs every run from one pass over the log, exactly as `run_records` does run
by run: the run's own events, the erasures of its records, and every gap, in log order."""

from __future__ import annotations

from pathlib import Path

from audit_testlib import STREAM, make_log, source

from keel_audit.reconstruct import records_by_run, run_records
from keel_audit.records import fixed_sensitive_paths


def test_one_pass_gives_each_run_what_run_records_gives_it_including_gaps_and_erasures(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit", sensitive=fixed_sensitive_paths("/secret"))
    writer = log.open()
    # Two runs interleaved across several segments (4 records each), a gap (seqs 6-7 never arrive),
    # then a run that starts only after the gap, and an erasure of one of r-1's records.
    for seq, run in [(1, "r-1"), (2, "r-2"), (3, "r-1"), (4, "r-1"), (5, "r-2"), (8, "r-3"), (9, "r-1")]:
        log.clock.advance(1)
        writer.append(source(seq, run=run, body={"run_id": run, "secret": f"s{seq}"}))
    writer.flush()
    writer.erase(f"{STREAM}:3", reason="asked", requested_by="user:dpo")

    grouped = records_by_run(log.store, log.keyring, payloads=log.payloads)

    assert sorted(grouped) == ["r-1", "r-2", "r-3"]
    for run in grouped:
        expected = list(run_records(log.store, log.keyring, run, payloads=log.payloads))
        assert grouped[run] == expected
    kinds = [row.kind for row in grouped["r-1"]]
    assert kinds == ["event", "event", "event", "gap", "event", "erasure"]
    assert [row.kind for row in grouped["r-3"]] == ["gap", "event"]
    assert [row.payload for row in grouped["r-1"] if row.kind == "event"] == [
        "restored",
        "redacted",
        "restored",
        "restored",
    ]
