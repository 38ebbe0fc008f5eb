"""The embedded default through the public CLI only: `keel up`, then `keel trigger/runs/run show/watch`."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel_shared.natsserver import free_port, port_open

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KEEL = [sys.executable, "-m", "keel_cli.main"]


class Up:
    def __init__(self, proc: subprocess.Popen[str], url: str, data_dir: Path) -> None:
        self.proc = proc
        self.url = url
        self.data_dir = data_dir
        self.output: list[str] = []


def keel(*args: str, url: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEEL, *args, "--nats-url", url], capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


@pytest.fixture
def keel_up(tmp_path: Path) -> Iterator[Up]:
    port = free_port()
    data_dir = tmp_path / "keel"
    proc = subprocess.Popen(
        [*KEEL, "up", "--data-dir", str(data_dir), "--nats-port", str(port), "--http-port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "KEEL_DEMO_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}"},
    )
    up = Up(proc, f"nats://127.0.0.1:{port}", data_dir)
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until `keel up` reports readiness (or exits)
        up.output.append(line)
        if "Press Ctrl-C to stop." in line:
            break
    else:
        pytest.fail("keel up exited early:\n" + "".join(up.output))
    try:
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def test_keel_up_runs_the_demo_twice_with_one_intent_key_and_joins_the_second_trigger(keel_up: Up) -> None:
    first = keel("trigger", "demo", "--input", "{}", "--key", "k1", "--wait", "--json", url=keel_up.url)
    assert first.returncode == 0, first.stderr
    second = keel("trigger", "demo", "--input", "{}", "--key", "k1", "--wait", "--json", url=keel_up.url)
    assert second.returncode == 0, second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["run_id"] == b["run_id"]
    assert (a["joined"], b["joined"]) == (False, True)
    assert a["status"] == b["status"] == "done"

    runs = json.loads(keel("runs", "--state", "done", "--json", url=keel_up.url).stdout)
    assert [r["run_id"] for r in runs["runs"]] == [a["run_id"]]

    shown = json.loads(keel("run", "show", a["run_id"], "--json", url=keel_up.url).stdout)
    assert shown["run"]["status"] == "done"
    kinds = [e["type"] for e in shown["events"]]
    assert kinds[0] == "run_started" and "run_completed" in kinds and kinds[-1] == "trigger_joined"


def test_keel_watch_prints_a_runs_events_in_stream_order_without_gaps_or_duplicates(keel_up: Up) -> None:
    answer = keel("trigger", "demo", "--input", "{}", "--key", "watched", "--json", url=keel_up.url)
    run_id = json.loads(answer.stdout)["run_id"]
    # --from-start replays what is stored, then follows live: nothing can slip in between.
    watch = subprocess.Popen(
        [*KEEL, "watch", run_id, "--from-start", "--json", "--nats-url", keel_up.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        watched: list[dict] = []
        while not watched or watched[-1]["type"] != "run_completed":
            watched.append(json.loads(watch.stdout.readline()))
    finally:
        watch.terminate()
        watch.wait(10)
    stored = json.loads(keel("run", "show", run_id, "--json", url=keel_up.url).stdout)["events"]
    assert [(e["seq"], e["type"]) for e in watched] == [(e["seq"], e["type"]) for e in stored]
    assert all(e["event"]["run_id"] == run_id for e in watched)


def test_keel_up_stops_every_process_on_sigterm(keel_up: Up) -> None:
    pids = [int(line.split("pid ")[1].split()[0]) for line in keel_up.output if " pid " in line]
    assert len(pids) >= 2
    nats_port = int(keel_up.url.rsplit(":", 1)[1])
    keel_up.proc.send_signal(signal.SIGTERM)
    assert keel_up.proc.wait(60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not port_open("127.0.0.1", nats_port)


def test_a_bad_command_line_gets_a_clear_error_not_a_traceback(keel_up: Up) -> None:
    bad_json = keel("trigger", "demo", "--input", "{nope", url=keel_up.url)
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    unknown = keel("trigger", "no-such-flow", "--key", "x", url=keel_up.url)
    assert unknown.returncode == 2 and "unknown_workflow" in unknown.stderr
    bad_token = keel("trigger", "has.dot", url=keel_up.url)
    assert bad_token.returncode == 1 and "workflow must match" in bad_token.stderr
    unreachable = keel("runs", url=f"nats://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1 and "cannot connect" in unreachable.stderr
    for result in (bad_json, unknown, bad_token, unreachable):
        assert "Traceback" not in result.stderr
