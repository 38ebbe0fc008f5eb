"""Throttling token guesses: a client that sends too many wrong approver tokens is answered 429.

Counted per client (the peer address of the HTTP connection), in a sliding window: someone guessing from
one address is slowed down without locking out approvers who connect from elsewhere. While a client is
throttled its tokens are not even checked, so guessing gains nothing; a correct token before the limit
clears that client's count. The memory it holds is bounded (the oldest clients are forgotten first).
"""

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic

from keel_approval.metrics import THROTTLED

#: Most clients remembered at once; beyond it the least recently seen is forgotten.
MAX_CLIENTS = 10_000


@dataclass
class GuessThrottle:
    max_failures: int = 10
    window_seconds: float = 60.0
    clock: Callable[[], float] = monotonic
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.get(client)
        if failures is None:
            return deque()
        cutoff = self.clock() - self.window_seconds
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def retry_after(self, client: str) -> float | None:
        """Seconds until this client may try a token again, or None when it may now."""
        failures = self._recent(client)
        if len(failures) < self.max_failures:
            return None
        THROTTLED.inc()
        return max(1.0, failures[-self.max_failures] + self.window_seconds - self.clock())

    def failed(self, client: str) -> None:
        failures = self._failures.setdefault(client, deque())
        failures.append(self.clock())
        while len(failures) > self.max_failures:
            failures.popleft()
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_CLIENTS:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
