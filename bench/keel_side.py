"""Keel's figures: W throughput and latency, W-io scaling with executors, idle memory."""

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.stats import summary_ms
from keel_cli.stack import Stack
from keel_contracts import subjects as s
from keel_contracts.codec import encode
from keel_shared.settings import KeelSettings
from keel_shared.triggers import build_trigger

WORKFLOWS = Path(__file__).resolve().parent / "workflows"


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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(url: str, data_dir: Path, scale: float = 1.0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stack = Stack(
        data_dir,
        nats_port=0,
        http_port=0,
        nats_url=url,
        executors=1,
        workflows_dir=WORKFLOWS,
        extra_env={"KEEL_LOG_LEVEL": "WARNING", "KEEL_EXECUTOR_CONCURRENCY": "8"},
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
            out["w_runs_per_s"] = await throughput(driver, "bench_w", int(600 * scale), 200, "thr")
            wio: dict[str, float] = {}
            for executors in (1, 2, 3):
                if executors > 1:
                    stack.add_executor()
                    assert all((await stack.wait_healthy(60)).values())
                wio[str(executors)] = await throughput(driver, "bench_wio", int(300 * scale), 200, f"io{executors}")
            out["wio_runs_per_s"] = wio
    finally:
        await asyncio.to_thread(stack.stop, 15)
    return out
