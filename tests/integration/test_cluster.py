"""Keel on a 3-node JetStream cluster: R3 streams, and runs that survive a node (and the stream leader)
being killed and restarted mid-flight, with no side effect done twice and an audit log that verifies.

Three nats-server processes on loopback, each a `NatsServer` with a cluster block (the layout of
infra/nats/cluster/n*.conf with free ports), the services connected to all three URLs.
"""

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from typer.testing import CliRunner

from keel_audit.cli import app as audit_app
from keel_audit.segment import parse_segment
from keel_audit.store import AuditDirectory, DirectorySegmentStore
from keel_cli.client import KeelClient, KeelError
from keel_cli.stack import Stack
from keel_contracts import subjects as s
from keel_executor.tools.demo import ledger_counts
from keel_shared.natsserver import NatsServer, free_port, nats_server_binary
from keel_shared.provisioning import provision
from keel_shared.settings import KeelSettings
from tests.conftest import ROOT, eventually, stack_workflows

pytestmark = pytest.mark.integration

CLUSTER_CONFIGS = sorted((ROOT / "infra" / "nats" / "cluster").glob("n*.conf"))


def cluster_block(name: str, port: int, route_ports: list[int]) -> str:
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
    return f'cluster {{ name: "{name}", listen: "127.0.0.1:{port}", routes: [{routes}] }}'


def start_cluster(base: Path, nodes: int = 3) -> list[NatsServer]:
    client_ports = [free_port() for _ in range(nodes)]
    route_ports = [free_port() for _ in range(nodes)]
    servers = [
        NatsServer(
            base / f"n{i + 1}", port=client_ports[i], extra_config=cluster_block("keel", route_ports[i], route_ports)
        )
        for i in range(nodes)
    ]
    for server in servers:
        server.start()
    return servers


def urls(servers: list[NatsServer]) -> str:
    return ",".join(server.url for server in servers)


async def connect_all(servers: list[NatsServer]) -> Client:
    return await nats.connect(
        [server.url for server in servers], max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2
    )


async def provision_when_ready(settings: KeelSettings, servers: list[NatsServer]) -> None:
    """Provision once the cluster has elected its meta leader (a few hundred ms after start)."""
    nc = await connect_all(servers)
    try:
        for _ in range(100):
            try:
                await provision(nc.jetstream(timeout=5), settings)
                return
            except Exception:  # no meta leader yet: 503 / timeouts
                await asyncio.sleep(0.3)
        raise AssertionError("the cluster never accepted provisioning")
    finally:
        await nc.close()


def node_named(servers: list[NatsServer], name: str) -> NatsServer:
    [found] = [srv for srv in servers if f"keel-{srv.port}" == name]
    return found


async def replicas_current(nc: Client, stream: str) -> bool:
    try:
        info = await nc.jetstream(timeout=2).stream_info(stream)
    except Exception:
        return False
    cluster = info.cluster
    return bool(
        cluster and cluster.leader and len(cluster.replicas or []) == 2 and all(r.current for r in cluster.replicas)
    )


def logs(data_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((data_dir / "logs").glob("*.log")))


async def diagnose(keel: KeelClient, run_ids: dict[str, str], ledger: str) -> str:
    """What a stuck run looks like from the outside: its events, its ledger rows, the queues' state."""
    lines = []
    for run_id in run_ids:
        lines.append(f"run {run_id}: ledger {ledger_counts(ledger, run_id)}")
        lines += [f"  {e.seq} {e.subject}" for e in await keel.timeline(run_id)]
    js = keel.nc.jetstream()
    for stream, durable in (
        (s.COMMANDS_STREAM, s.EXECUTOR_DURABLE),
        (s.EVENTS_STREAM, s.ROUTER_EVENTS_DURABLE),
        (s.COMMANDS_STREAM, s.ROUTER_TRIGGERS_DURABLE),
    ):
        info = await js.consumer_info(stream, durable)
        lines.append(
            f"{stream}/{durable}: pending={info.num_pending} ack_pending={info.num_ack_pending} "
            f"redelivered={info.num_redelivered} delivered={info.delivered} ack_floor={info.ack_floor}"
        )
    return "\n".join(lines)


@pytest.mark.parametrize("config", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_the_shipped_cluster_configs_are_valid(config: Path) -> None:
    result = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert re.search(r"routes:\s*\[\s*nats-route://n1:6222\s+nats-route://n2:6222\s+nats-route://n3:6222", text)
    assert f"server_name: {config.stem}" in text


def test_there_are_three_cluster_configs() -> None:
    assert [p.name for p in CLUSTER_CONFIGS] == ["n1.conf", "n2.conf", "n3.conf"]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[NatsServer]]:
    servers = start_cluster(tmp_path / "cluster")
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_replicas_3_provisions_every_stream_and_bucket_on_three_nodes(cluster: list[NatsServer]) -> None:
    await provision_when_ready(KeelSettings(replicas=3), cluster)
    nc = await connect_all(cluster)
    try:
        js = nc.jetstream()
        for stream in (s.EVENTS_STREAM, s.COMMANDS_STREAM, "KEEL_TIMERS", s.DLQ_STREAM, f"KV_{s.RUNS_BUCKET}"):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
            await eventually(lambda st=stream: replicas_current(nc, st), timeout=30)
    finally:
        await nc.close()


async def test_runs_finish_once_while_a_node_and_then_the_stream_leader_are_killed(
    cluster: list[NatsServer], tmp_path: Path
) -> None:
    settings = KeelSettings(replicas=3, ack_wait_seconds=3)
    await provision_when_ready(settings, cluster)
    data_dir = tmp_path / "stack"
    ledger = f"sqlite:///{data_dir / 'ledger.db'}"
    stack = Stack(
        data_dir,
        nats_port=0,
        http_port=0,
        nats_url=urls(cluster),
        executors=2,
        workflows_dir=stack_workflows(tmp_path),
        extra_env={
            "KEEL_DEMO_LEDGER_URL": ledger,
            "KEEL_HEARTBEAT_SECONDS": "0.5",
            "KEEL_ACK_WAIT_SECONDS": "3",
            "KEEL_AUDIT_SEGMENT_MAX_AGE_SECONDS": "1",
        },
        settings=settings,
    )
    # Create the ledger's tables before two executors race to (the demo tool creates them lazily).
    data_dir.mkdir(parents=True, exist_ok=True)
    ledger_counts(ledger)
    nc = await connect_all(cluster)
    keel = KeelClient(nc)
    run_ids: dict[str, str] = {}

    async def trigger(workflow: str, key: str, data: dict[str, object]) -> None:
        # A client caught by the failover (its node gone, the stream leaderless for seconds) times out;
        # triggering again with the same intent key is safe by design: it joins the same run.
        for attempt in range(5):
            try:
                answer = await keel.trigger(workflow, data, key, timeout=30)  # type: ignore[arg-type]
            except KeelError:
                if attempt == 4:
                    raise
                continue
            run_ids[answer.run_id] = workflow
            return

    async def batch(tag: str) -> None:
        await asyncio.gather(
            *(trigger("ledger3", f"{tag}-l{n}", {"delay": 0.3}) for n in range(3)),
            *(trigger("demo", f"{tag}-d{n}", {"n": n}) for n in range(3)),
        )

    try:
        await stack.start()
        health = await stack.wait_healthy(timeout=60)
        assert all(health.values()), health

        # 1. A follower (of the events stream) dies mid-flight and comes back.
        await batch("a")
        info = await nc.jetstream().stream_info(s.EVENTS_STREAM)
        leader = info.cluster.leader if info.cluster else None
        follower = next(srv for srv in cluster if f"keel-{srv.port}" != leader)
        follower.kill()
        await batch("b")
        await asyncio.sleep(2)
        follower.start()
        await eventually(lambda: replicas_current(nc, s.EVENTS_STREAM), timeout=60)

        # 2. The events stream's leader is SIGKILLed while runs are in flight: a new leader is elected,
        # publishers retry with the same Nats-Msg-Id, and the node catches up when it is back.
        await batch("c")
        info = await nc.jetstream().stream_info(s.EVENTS_STREAM)
        assert info.cluster and info.cluster.leader
        old_leader = node_named(cluster, info.cluster.leader)
        old_leader.kill()
        await batch("d")
        await asyncio.sleep(3)
        old_leader.start()

        pending: dict[str, str] = {}

        async def all_done() -> bool:
            pending.clear()
            for run_id in run_ids:
                try:
                    view = await keel.run(run_id)
                except NatsTimeoutError:
                    # This client's reads go through the failover too (its server can be the one that
                    # just came back, still catching up): not an answer yet, ask again.
                    pending[run_id] = "view read timed out"
                    return False
                if view is None or view.status != "done":
                    pending[run_id] = f"{run_ids[run_id]}: {view.status if view else None}"
            return not pending

        try:
            await eventually(all_done, timeout=180, interval=0.5)
        except AssertionError:
            raise AssertionError(f"runs not done: {pending}\n{await diagnose(keel, pending, ledger)}") from None
        await eventually(lambda: replicas_current(nc, s.EVENTS_STREAM), timeout=60)
        new_info = await nc.jetstream().stream_info(s.EVENTS_STREAM)
        assert new_info.config.num_replicas == 3

        # No side effect twice: ledger3 writes three entries per run, demo one, each exactly once.
        assert len(run_ids) == 24
        for run_id, workflow in run_ids.items():
            counts = ledger_counts(ledger, run_id)
            assert counts["effects"] == (3 if workflow == "ledger3" else 1), (run_id, workflow, counts)
            timeline = [e.type for e in await keel.timeline(run_id)]
            assert timeline.count("run_completed") == 1, (run_id, timeline)

        # The audit log covers the whole stream, in order, and verifies.
        last = int(new_info.state.last_seq)
        store = DirectorySegmentStore(AuditDirectory(data_dir / "audit").segments)

        def sealed_through() -> bool:
            indices = store.indices()
            return bool(indices) and parse_segment(store.read(indices[-1])).seal.last_seq >= last

        await eventually(sealed_through, timeout=60, interval=0.5)
        result = CliRunner().invoke(audit_app, ["verify", "--dir", str(data_dir / "audit"), "--json"])
        report = json.loads(result.output)
        assert result.exit_code == 0 and report["verdict"] == "valid", result.output
        assert report["events"] >= last
    finally:
        await nc.close()
        await asyncio.to_thread(stack.stop, 15)
