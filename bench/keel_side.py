"""Keel's figures: W throughput and latency, W-io scaling with executors, audit lag and verification
speed, idle memory."""

import asyncio
import os
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from bench.stats import summary_ms
from keel_audit.keyring import KeyringFile
from keel_audit.records import SourceRecord
from keel_audit.signing import Signer
from keel_audit.store import AuditDirectory, DirectorySegmentStore
from keel_audit.verify import verify_log
from keel_audit.writer import SegmentWriter
from keel_cli.stack import Stack
from keel_contracts import subjects as s
from keel_contracts.codec import encode
from keel_shared.eventstore import EventStore
from keel_shared.settings import KeelSettings
from keel_shared.triggers import build_trigger

WORKFLOWS = Path(__file__).resolve().parent / "workflows"
#: Tool calls one executor process runs at once in W-io. Low enough that one executor, not the CPU the
#: router and the server need, is what limits W-io on a 2-core machine: the figure then shows what
#: another executor process adds, which is the question W-io asks.
WIO_EXECUTOR_CONCURRENCY = 2
#: The audit seals a segment at least this often in the bench, so its lag measures how far behind it
#: reads rather than how long it waits to fill a segment (production default: 60 s or 1,024 records).
AUDIT_SEGMENT_SECONDS = 1


class Driver:
    """Publishes triggers and learns about completions from the event stream (no CLI in the loop)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waiters: dict[str, asyncio.Future[None]] = {}

    async def __aenter__(self) -> "Driver":
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream(timeout=10)
        self.sub = await self.js.subscribe(
            "keel.run.*.*.router.run_completed",
            stream=s.EVENTS_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            cb=self._done,
        )
        return self

    async def _done(self, msg: Any) -> None:
        future = self.waiters.pop(msg.subject.split(".")[3], None)
        if future is not None and not future.done():
            future.set_result(None)

    async def run(self, workflow: str, key: str) -> None:
        trigger = build_trigger(workflow, {}, key, source="bench")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[trigger.run_id] = future
        await self.js.publish(s.trigger_subject("bench"), encode(trigger), headers={"Nats-Msg-Id": trigger.dedupe_key})
        await asyncio.wait_for(future, 120)

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()


async def throughput(driver: Driver, workflow: str, runs: int, in_flight: int, tag: str) -> float:
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await driver.run(workflow, f"{tag}-{i}")

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(runs)))
    return runs / (time.perf_counter() - start)


async def latency(driver: Driver, workflow: str, n: int, tag: str) -> dict[str, float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await driver.run(workflow, f"{tag}-{i}")
        samples.append(time.perf_counter() - start)
    return summary_ms(samples)


def _gauge(port: int, name: str) -> float | None:
    """One unlabelled gauge from a service's /metrics, or None when it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return None


class AuditLag:
    """Samples the audit service's lag (stream sequences not yet in a sealed segment) while a load runs."""

    def __init__(self, metrics_port: int, every: float = 0.1) -> None:
        self.port = metrics_port
        self.every = every
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            lag = await asyncio.to_thread(_gauge, self.port, "keel_audit_lag")
            if lag is not None:
                self.peak = max(self.peak, lag)
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def catch_up_seconds(self, timeout: float = 120) -> float:
        """Seconds until everything stored so far is in a sealed segment."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            lag = await asyncio.to_thread(_gauge, self.port, "keel_audit_lag")
            if lag == 0:
                return time.perf_counter() - start
            await asyncio.sleep(0.05)
        return float("nan")


async def verify_speed(url: str, directory: Path) -> dict[str, float]:
    """What `keel audit verify` does (every record, root, chain link and signature), over this run's
    own events sealed into production-size segments (the bench's audit service seals every second, which
    makes small segments), timed in-process so the figure is the verification, not interpreter start."""
    nc = await nats.connect(url)
    try:
        events = await EventStore(nc, nc.jetstream(), "bench").read(s.EVENTS_ALL, batch=1024)
    finally:
        await nc.close()
    layout = AuditDirectory(directory)
    keyring = KeyringFile(layout.keyring)
    writer = SegmentWriter(
        DirectorySegmentStore(layout.segments), Signer.generate(), stream=s.EVENTS_STREAM, keyring=keyring
    )
    for event in events:
        writer.append(
            SourceRecord(s.EVENTS_STREAM, event.seq, event.subject, event.time or datetime.now(UTC), {}, event.data)
        )
    writer.flush()
    trusted = keyring.load()
    assert trusted is not None
    start = time.perf_counter()
    report = await asyncio.to_thread(verify_log, DirectorySegmentStore(layout.segments), trusted, now=datetime.now(UTC))
    seconds = time.perf_counter() - start
    assert report.exit_code == 0, [p.message for p in report.problems]
    return {
        "records": report.records,
        "segments": report.segments,
        "seconds": round(seconds, 3),
        "records_per_s": report.records / seconds if seconds else float("nan"),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(url: str, data_dir: Path, scale: float = 1.0, nats_pid: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stack = Stack(
        data_dir,
        nats_port=0,
        http_port=0,
        nats_url=url,
        executors=1,
        workflows_dir=WORKFLOWS,
        extra_env={
            "KEEL_LOG_LEVEL": "WARNING",
            "KEEL_AUDIT_SEGMENT_MAX_AGE_SECONDS": str(AUDIT_SEGMENT_SECONDS),
        },
        settings=KeelSettings(),
    )
    await stack.start()
    try:
        health = await stack.wait_healthy(60)
        assert all(health.values()), health
        await asyncio.sleep(2)
        out["idle_rss_mb"] = {label: round(rss_mb(child.proc.pid), 1) for label, child in stack.children.items()}
        async with Driver(url) as driver:
            await latency(driver, "bench_w", 5, "warm")
            out["w_latency"] = await latency(driver, "bench_w", int(100 * scale), "lat")
            lag = AuditLag(stack.children["audit"].spec.metrics_port)
            lag.start()
            pids = {label: child.proc.pid for label, child in stack.children.items()}
            pids["bench driver"] = os.getpid()
            if nats_pid is not None:
                pids["nats-server"] = nats_pid
            before = {label: cpu_seconds(pid) for label, pid in pids.items()}
            runs = int(600 * scale)
            out["w_runs_per_s"] = await throughput(driver, "bench_w", runs, 200, "thr")
            out["w_cpu_ms_per_run"] = {
                label: round((cpu_seconds(pid) - before[label]) * 1000 / runs, 2) for label, pid in pids.items()
            }
            await lag.stop()
            out["audit"] = {"peak_lag_events": lag.peak, "catch_up_s": round(await lag.catch_up_seconds(), 3)}
            # W ran with the default concurrency; W-io's executors run WIO_EXECUTOR_CONCURRENCY calls each.
            stack.extra_env["KEEL_EXECUTOR_CONCURRENCY"] = str(WIO_EXECUTOR_CONCURRENCY)
            stack.restart("executor")
            assert all((await stack.wait_healthy(60)).values())
            wio: dict[str, float] = {}
            for executors in (1, 2, 3):
                if executors > 1:
                    stack.add_executor()
                    assert all((await stack.wait_healthy(60)).values())
                wio[str(executors)] = await throughput(driver, "bench_wio", int(300 * scale), 200, f"io{executors}")
            out["wio_runs_per_s"] = wio
            out["wio_executor_concurrency"] = WIO_EXECUTOR_CONCURRENCY
            await AuditLag(stack.children["audit"].spec.metrics_port).catch_up_seconds()
    finally:
        await asyncio.to_thread(stack.stop, 15)
    out["audit"]["verify"] = await verify_speed(url, data_dir / "verify-speed")
    return out
