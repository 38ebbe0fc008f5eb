"""`keel up`: the embedded default. A nats-server with JetStream in the data dir, Keel's streams,
and every service as a child process, restarted if it dies, all stopped cleanly on Ctrl-C/SIGTERM."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from keel_shared import decisions, schedules
from keel_shared.connection import connect
from keel_shared.natsserver import NatsServer, free_port
from keel_shared.provisioning import provision
from keel_shared.security import SecureLayout, init_secure
from keel_shared.settings import KeelSettings


@dataclass
class ServiceSpec:
    name: str
    module: str
    metrics_port: int
    instance: int = 0
    # Environment only this service gets (e.g. the approval service's HTTP port).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}-{self.instance}" if self.instance else self.name


@dataclass
class Child:
    spec: ServiceSpec
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0


def service_specs(http_port: int, executors: int, sandbox: bool = False) -> list[ServiceSpec]:
    """Approval inbox on http_port, router on http_port+1, executors after it, then the approval
    and audit services' metrics. http_port 0 gives every service a free port."""

    def port(offset: int) -> int:
        return free_port() if http_port == 0 else http_port + offset

    specs = [ServiceSpec("router", "keel_router", port(1))]
    for i in range(executors):
        specs.append(ServiceSpec("executor", "keel_executor", port(2 + i), instance=i + 1 if executors > 1 else 0))
    # The approval inbox is what people open, so it gets the front port itself.
    specs.append(
        ServiceSpec("approval", "keel_approval", port(2 + executors), env={"KEEL_APPROVAL_HTTP_PORT": str(port(0))})
    )
    specs.append(ServiceSpec("audit", "keel_audit", port(3 + executors)))
    # The live dashboard: metrics port, then its page; it links to the approval inbox.
    inbox = next(spec.env["KEEL_APPROVAL_HTTP_PORT"] for spec in specs if spec.name == "approval")
    dashboard_env = {
        "KEEL_DASHBOARD_HTTP_PORT": str(port(5 + executors)),
        "KEEL_APPROVAL_URL": f"http://127.0.0.1:{inbox}",
    }
    specs.append(ServiceSpec("dashboard", "keel_dashboard", port(4 + executors), env=dashboard_env))
    # The webhook ingress serves hooks, /healthz and /metrics on one port.
    ingress = port(6 + executors)
    specs.append(ServiceSpec("ingress", "keel_router.ingress", ingress, env={"KEEL_INGRESS_HTTP_PORT": str(ingress)}))
    if sandbox:
        # The sandbox systems of record the example workflows write to; /healthz on its own API port.
        api = port(7 + executors)
        specs.append(ServiceSpec("sandbox", "keel_sandbox", api, env={"KEEL_SANDBOX_PORT": str(api)}))
    return specs


class Stack:
    def __init__(
        self,
        data_dir: Path,
        nats_port: int,
        http_port: int,
        nats_url: str | None = None,
        executors: int = 1,
        workflows_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        settings: KeelSettings | None = None,
        secure_dir: Path | None = None,
        sandbox: bool = False,
        services: Collection[str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.http_port = http_port
        self.server: NatsServer | None = None if nats_url else NatsServer(self.data_dir / "nats", port=nats_port)
        self._nats_url = nats_url
        # `services` runs a subset (tests start only what they exercise); None runs everything.
        self.specs = [
            spec for spec in service_specs(http_port, executors, sandbox) if services is None or spec.name in services
        ]
        self.workflows_dir = (workflows_dir or Path("workflows")).resolve()
        self.extra_env = extra_env or {}
        # Provisioning settings (replicas, ack wait, dedupe window); the URL is always this stack's.
        self._settings = settings or KeelSettings()
        self.children: dict[str, Child] = {}
        self._stopping = False
        # `--secure`: one NKEY identity per service (docs/security.md); the embedded server includes the
        # generated authorization block, and each child gets only its own seed.
        self.secure: SecureLayout | None = None
        if secure_dir is not None:
            self.secure = init_secure(secure_dir.resolve(), self._settings)
            if self.server is not None:
                # nats-server resolves an include relative to the including file, never as absolute.
                auth = os.path.relpath(self.secure.auth_config, self.server.data_dir)
                include = f'include "{Path(auth).as_posix()}"'
                self.server.extra_config = "\n".join(x for x in (self.server.extra_config, include) if x)

    @property
    def nats_url(self) -> str:
        if self._nats_url:
            return self._nats_url
        assert self.server is not None
        return self.server.url

    @property
    def approval_url(self) -> str | None:
        """Base URL of the approval API and inbox."""
        for spec in self.specs:
            if spec.name == "approval":
                return f"http://127.0.0.1:{spec.env['KEEL_APPROVAL_HTTP_PORT']}"
        return None

    @property
    def dashboard_url(self) -> str | None:
        for spec in self.specs:
            if spec.name == "dashboard":
                return f"http://127.0.0.1:{spec.env['KEEL_DASHBOARD_HTTP_PORT']}/"
        return None

    def _env(self, spec: ServiceSpec) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "KEEL_NATS_URL": self.nats_url,
                "KEEL_DATA_DIR": str(self.data_dir),
                "KEEL_WORKFLOWS_DIR": str(self.workflows_dir),
                "KEEL_METRICS_PORT": str(spec.metrics_port),
                "KEEL_INSTANCE_ID": f"{spec.label}-{os.getpid()}",
            }
        )
        sandbox = next((s for s in self.specs if s.name == "sandbox"), None)
        if sandbox is not None:
            env.setdefault("KEEL_SANDBOX_URL", f"http://127.0.0.1:{sandbox.metrics_port}")
            env.setdefault("KEEL_SANDBOX_DB_URL", f"sqlite:///{self.data_dir / 'sandbox.db'}")
        env.update(spec.env)
        env.update(self.extra_env)
        # Only processes that talk to NATS have an identity (the sandbox, an HTTP stand-in, has none).
        if self.secure is not None and spec.name in self.secure.identities:
            env["KEEL_NATS_NKEY_SEED_FILE"] = str(self.secure.seed_file(spec.name))
        return env

    def _spawn(self, spec: ServiceSpec, restarts: int = 0) -> Child:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{spec.label}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", spec.module],
                env=self._env(spec),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
            )
        child = Child(spec, proc, log_path, restarts=restarts)
        self.children[spec.label] = child
        return child

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.server is not None:
            self.server.start()
        settings = self._settings.model_copy(update={"nats_url": self.nats_url})
        if self.secure is not None:
            settings = settings.model_copy(update={"nats_nkey_seed_file": self.secure.seed_file("admin")})
        nc = await connect(settings, "admin", retry_initial=False, quiet=True)
        try:
            await provision(nc.jetstream(), settings)
        finally:
            await nc.close()
        # The approval service's decision key, the router's schedule key, and the keyrings that list them
        # (decision 026).
        keys = settings.model_copy(update={"data_dir": self.data_dir})
        decisions.KEYS.ensure(keys)
        schedules.KEYS.ensure(keys)
        for spec in self.specs:
            self._spawn(spec)

    async def wait_healthy(self, timeout: float = 30.0) -> dict[str, bool]:
        deadline = time.monotonic() + timeout
        status = {label: False for label in self.children}
        while time.monotonic() < deadline and not all(status.values()):
            for label, child in self.children.items():
                if not status[label]:
                    status[label] = await asyncio.to_thread(_healthy, child.spec.metrics_port)
            if not all(status.values()):
                await asyncio.sleep(0.2)
        return status

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart a child that died, with a growing pause so a crash loop does not spin."""
        while not stop.is_set():
            for label, child in list(self.children.items()):
                code = child.proc.poll()
                if code is not None and not self._stopping:
                    pause = min(2 ** min(child.restarts, 5) * 0.25, 10.0)
                    print(f"keel: {label} exited with {code}; restarting in {pause:.1f}s (log: {child.log_path})")
                    await asyncio.sleep(pause)
                    if not self._stopping:
                        self._spawn(child.spec, restarts=child.restarts + 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    def kill(self, label: str) -> None:
        """SIGKILL one service, as a crash would. The supervisor (if running) restarts it."""
        child = self.children[label]
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()

    def restart(self, label: str) -> Child:
        child = self.children[label]
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            child.proc.wait(35)
        return self._spawn(child.spec, restarts=child.restarts + 1)

    def add_executor(self) -> Child:
        """One more executor process on the shared durable consumer (horizontal scale-out)."""
        count = sum(1 for c in self.children.values() if c.spec.name == "executor")
        spec = ServiceSpec("executor", "keel_executor", free_port(), instance=count + 1)
        self.specs.append(spec)
        return self._spawn(spec)

    def stop(self, timeout: float = 35.0) -> None:
        self._stopping = True
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        if self.server is not None:
            self.server.stop()

    def describe(self) -> list[tuple[str, str]]:
        rows = [("nats", self.nats_url + (f"  (data: {self.server.data_dir})" if self.server else "  (external)"))]
        for label, child in self.children.items():
            rows.append(
                (
                    label,
                    f"pid {child.proc.pid}  http://127.0.0.1:{child.spec.metrics_port}/metrics  log {child.log_path}",
                )
            )
        if self.approval_url:
            rows.append(("inbox", f"{self.approval_url}/inbox  (approvers: keel approvers add NAME --role ROLE)"))
        if self.dashboard_url:
            rows.append(("dashboard", self.dashboard_url))
        rows.append(("workflows", str(self.workflows_dir)))
        return rows


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
