"""The raw JetStream floor: what the same server does with no Keel code in the way.

Measured: publish-with-ack rate, pull-consume-and-ack rate, one publish-consume-reply hop between two
processes, and a minimal 3-step pipeline (for each step: publish a command, a worker process consumes
it and publishes the result, the driver consumes the result and goes on) with runs in flight — the
same shape as Keel's workflow W, without event sourcing, routing, claims or audit.
"""

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from bench.stats import summary_ms

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = b'{"run_id":"rbench","step":"s","input":{"customer":"ACME","amount":42}}' + b" " * 120


async def publish_rate(url: str, n: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="FLOOR_PUB", subjects=["floor.pub.>"], storage=StorageType.FILE))
    start = time.perf_counter()
    for i in range(n):
        await js.publish("floor.pub.x", PAYLOAD, headers={"Nats-Msg-Id": f"p{i}"})
    rate = n / (time.perf_counter() - start)
    await nc.close()
    return rate


async def consume_rate(url: str, n: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("floor.pub.>", durable="floor-consume", stream="FLOOR_PUB")
    done = 0
    start = time.perf_counter()
    while done < n:
        for msg in await sub.fetch(min(256, n - done), timeout=5):
            await msg.ack()
            done += 1
    rate = n / (time.perf_counter() - start)
    await nc.close()
    return rate


class Pipeline:
    """Driver side of the raw pipeline, plus its worker process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worker: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "Pipeline":
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()
        await self.js.add_stream(
            StreamConfig(
                name="FLOOR_CMD",
                subjects=["floor.cmd.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
        await self.js.add_stream(StreamConfig(name="FLOOR_RES", subjects=["floor.res.>"], storage=StorageType.FILE))
        await self.js.add_consumer(
            "FLOOR_CMD", ConsumerConfig(durable_name="worker", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1000)
        )
        self.worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.floor_worker",
            self.url,
            "FLOOR_CMD",
            "worker",
            "64",
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        assert self.worker.stdout is not None
        await self.worker.stdout.readline()  # "ready"
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.results = await self.js.subscribe(
            "floor.res.>", stream="FLOOR_RES", ordered_consumer=True, cb=self._on_result
        )
        return self

    async def _on_result(self, msg: Any) -> None:
        future = self.waiters.pop(msg.subject.removeprefix("floor.res."), None)
        if future is not None and not future.done():
            future.set_result(None)

    async def step(self, run: str, step: int) -> None:
        key = f"{run}.{step}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[key] = future
        await self.js.publish(f"floor.cmd.{key}", PAYLOAD, headers={"Nats-Msg-Id": f"c{key}"})
        await future

    async def run(self, run: str, steps: int = 3) -> None:
        for step in range(steps):
            await self.step(run, step)

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()
        if self.worker is not None:
            self.worker.terminate()
            await asyncio.wait_for(self.worker.wait(), 10)


async def hop_latency(pipeline: Pipeline, n: int) -> dict[str, float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await pipeline.step(f"hop{i}", 0)
        samples.append(time.perf_counter() - start)
    return summary_ms(samples)


async def pipeline_throughput(pipeline: Pipeline, runs: int, in_flight: int, prefix: str) -> float:
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await pipeline.run(f"{prefix}{i}")

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(runs)))
    return runs / (time.perf_counter() - start)


async def pipeline_latency(pipeline: Pipeline, n: int) -> dict[str, float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await pipeline.run(f"lat{i}")
        samples.append(time.perf_counter() - start)
    return summary_ms(samples)


async def measure(url: str, scale: float = 1.0) -> dict[str, Any]:
    n = int(3000 * scale)
    out: dict[str, Any] = {}
    out["publish_per_s"] = await publish_rate(url, n)
    out["consume_ack_per_s"] = await consume_rate(url, n)
    async with Pipeline(url) as pipeline:
        await pipeline.run("warmup")
        out["hop"] = await hop_latency(pipeline, int(200 * scale))
        out["w_latency"] = await pipeline_latency(pipeline, int(100 * scale))
        out["w_runs_per_s"] = await pipeline_throughput(pipeline, int(600 * scale), 200, "thr")
    return out
