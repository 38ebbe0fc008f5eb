"""The chaos monkey: at random moments (one seeded RNG) it SIGKILLs a Keel service and starts it again,
or restarts the nats-server under everything (SIGKILL or SIGTERM, then the same port and store)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass

from keel_cli.stack import Stack
from keel_shared.natsserver import NatsServer

NATS = "nats-server"
#: How often each kind of target is picked after the first round: the router holds every run's
#: decisions, so it is hit most; a server restart stalls everything for seconds, so it is hit least.
WEIGHTS = {"router": 3, "executor": 2, "approval": 2, "audit": 2, NATS: 1}


def kind(target: str) -> str:
    """`executor-2` -> `executor`: the service a process label belongs to."""
    return target if target == NATS else target.split("-")[0]


@dataclass(frozen=True)
class Strike:
    at: float  # seconds since the monkey started
    target: str
    how: str  # SIGKILL, or SIGTERM (a graceful server restart)
    down_for: float

    def describe(self) -> str:
        return f"{self.at:7.1f}s {self.how} {self.target} (down {self.down_for:.1f}s)"


class ChaosMonkey:
    def __init__(self, stack: Stack, server: NatsServer, rng: random.Random, mean_pause: float) -> None:
        self.stack = stack
        self.server = server
        self.rng = rng
        self.mean_pause = mean_pause
        self.targets = [label for label in stack.children if kind(label) in WEIGHTS] + [NATS]
        self.strikes: list[Strike] = []
        #: Services that exited without being struck (restarted, as `keel up`'s supervisor would), and
        #: the last line each wrote before it did.
        self.exited: Counter[str] = Counter()
        self.exit_notes: list[str] = []
        self._started = time.monotonic()

    def covered(self) -> bool:
        """Every target has been struck at least once."""
        return {strike.target for strike in self.strikes} >= set(self.targets)

    def kills(self) -> Counter[str]:
        return Counter(strike.target for strike in self.strikes if strike.target != NATS)

    def server_restarts(self) -> Counter[str]:
        return Counter(strike.how for strike in self.strikes if strike.target == NATS)

    async def run(self, stop: asyncio.Event) -> None:
        """Strike until `stop` is set. The first round hits every target once, in random order, so even
        a short run kills each service and restarts the server at least once."""
        first_round = self.rng.sample(self.targets, len(self.targets))
        weights = [WEIGHTS[kind(target)] for target in self.targets]
        self._started = time.monotonic()
        while not stop.is_set():
            pause = min(max(self.rng.expovariate(1 / self.mean_pause), 0.2), 3 * self.mean_pause)
            deadline = time.monotonic() + pause
            while not stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(0.5, max(0.0, deadline - time.monotonic())))
                await self.revive()
            if stop.is_set():
                return
            target = first_round.pop() if first_round else self.rng.choices(self.targets, weights)[0]
            await self.strike(target)

    async def strike(self, target: str) -> None:
        # Down for long enough, sometimes, that work piles up and ack waits expire behind the crash.
        down_for = self.rng.uniform(0.05, 2.5)
        if target == NATS:
            how = self.rng.choice(["SIGKILL", "SIGTERM"])
            await asyncio.to_thread(self.server.kill if how == "SIGKILL" else self.server.stop)
            await asyncio.sleep(down_for)
            await asyncio.to_thread(self.server.start)
        else:
            how = "SIGKILL"
            await asyncio.to_thread(self.stack.kill, target)
            await asyncio.sleep(down_for)
            # The process is dead, so restart only starts a new one.
            await asyncio.to_thread(self.stack.restart, target)
        self.strikes.append(Strike(time.monotonic() - self._started, target, how, down_for))

    async def revive(self) -> None:
        """Start again, and count, any service that exited though nobody struck it."""
        for label, child in list(self.stack.children.items()):
            code = child.proc.poll()
            if code is not None:
                self.exited[label] += 1
                lines = child.log_path.read_text(errors="replace").strip().splitlines() or [""]
                self.exit_notes.append(f"{label} exited with {code}: {lines[-1][:300]}")
                await asyncio.to_thread(self.stack.restart, label)

    async def heal(self) -> None:
        """Everything up again after the last strike."""
        if not self.server.running():
            await asyncio.to_thread(self.server.start)
        await self.revive()
