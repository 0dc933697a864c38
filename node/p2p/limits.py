"""Per-peer limits on inbound streams: one gate in front of every stream protocol.

``StreamGate.admit(peer, protocol)`` runs before a stream handler (``KaisarHost.set_handler``):

- a token bucket per (peer, protocol): ``rate`` new streams per second, ``burst`` at once;
- at most ``per_peer`` streams from one peer open at the same time (all protocols);
- at most ``total`` inbound streams open at the same time (all peers), so many cheap
  identities cannot together hold every handler (slow-loris).

A refused stream is reset before any byte of it is read, and counted
(``kaisar_streams_limited_total{reason}``); the peer's other streams and every other
peer are unaffected. Buckets are kept for at most ``max_tracked`` (peer, protocol)
pairs (least recently used dropped), so the gate's own memory is bounded too.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

RATE = "rate"
PEER_CONCURRENCY = "peer-concurrency"
TOTAL_CONCURRENCY = "total-concurrency"


@dataclass(frozen=True)
class StreamLimits:
    rate: float = 50.0  # new streams per second per (peer, protocol), refilled continuously
    burst: int = 100  # streams a quiet peer may open at once per protocol
    per_peer: int = 64  # open inbound streams per peer (tunnels are long-lived)
    total: int = 1024  # open inbound streams, all peers together
    max_tracked: int = 10_000  # (peer, protocol) buckets remembered


class StreamGate:
    """Admission control for inbound streams; not thread-safe (one trio task at a time)."""

    def __init__(self, limits: StreamLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._open: dict[str, int] = {}
        self._total = 0

    def admit(self, peer: str, protocol: str) -> str | None:
        """Take a slot for a new stream: None if admitted (call ``release`` later), else why not."""
        lim = self.limits
        # Concurrency first: a refused stream must not spend the peer's rate budget
        if self._total >= lim.total:
            return TOTAL_CONCURRENCY
        if self._open.get(peer, 0) >= lim.per_peer:
            return PEER_CONCURRENCY
        # The peer's bucket for this protocol has a token
        if not self._take(peer, protocol):
            return RATE
        self._open[peer] = self._open.get(peer, 0) + 1
        self._total += 1
        return None

    def release(self, peer: str) -> None:
        left = self._open.get(peer, 0) - 1
        if left > 0:
            self._open[peer] = left
        else:
            self._open.pop(peer, None)
        self._total = max(self._total - 1, 0)

    def open_streams(self, peer: str | None = None) -> int:
        return self._total if peer is None else self._open.get(peer, 0)

    def _take(self, peer: str, protocol: str) -> bool:
        key = (peer, protocol)
        now = self.clock()
        tokens, last = self._buckets.pop(key, (float(self.limits.burst), now))
        tokens = min(float(self.limits.burst), tokens + (now - last) * self.limits.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.limits.max_tracked:
            self._buckets.popitem(last=False)
        return ok
