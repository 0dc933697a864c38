"""Per-peer limits: one gate in front of every stream protocol, one in front of gossip.

``StreamGate.admit(peer, protocol)`` runs before a stream handler (``KaisarHost.set_handler``):

- a token bucket per (peer, protocol): ``rate`` new streams per second, ``burst`` at once;
- at most ``per_peer`` streams from one peer open at the same time (all protocols);
- at most ``total`` inbound streams open at the same time (all peers), so many cheap
  identities cannot together hold every handler (slow-loris).

A refused stream is reset before any byte of it is read, and counted
(``kaisar_streams_limited_total{reason}``); the peer's other streams and every other
peer are unaffected. Buckets are kept for at most ``max_tracked`` (peer, protocol)
pairs (least recently used dropped), so the gate's own memory is bounded too.

``GossipGate`` runs in the gossip validator (``KaisarHost._validator``): a bucket per
forwarding peer *before* a message is decoded (the connection's peer is authenticated by
Noise, so the CPU an attacker can make a node spend on signature checks is bounded per
connection), and a bucket per envelope signer *after* its signature checks out (a valid
but useless flood from one key is dropped and not forwarded, while honest relays of it
do not exhaust their own forwarding budget upstream). Rejections are counted with the
other gossip rejections (``reason="rate-forwarder"`` / ``"rate-signer"``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


class TokenBuckets:
    """One token bucket per key, refilled at ``rate`` per second up to ``burst``; LRU-bounded."""

    def __init__(
        self, rate: float, burst: float, max_tracked: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.max_tracked, self.clock = rate, float(burst), max_tracked, clock
        self._buckets: OrderedDict[Any, tuple[float, float]] = OrderedDict()

    def take(self, key: Any) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_tracked:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class GossipLimits:
    forwarder_rate: float = 1000.0  # messages per second a directly connected peer may relay
    forwarder_burst: int = 5000
    signer_rate: float = 200.0  # valid messages per second one key may sign
    signer_burst: int = 1000
    max_tracked: int = 10_000


class GossipGate:
    def __init__(self, limits: GossipLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.forwarders = TokenBuckets(limits.forwarder_rate, limits.forwarder_burst, limits.max_tracked, clock)
        self.signers = TokenBuckets(limits.signer_rate, limits.signer_burst, limits.max_tracked, clock)

    def forwarder_ok(self, peer: str) -> bool:
        return self.forwarders.take(peer)

    def signer_ok(self, address: str) -> bool:
        return self.signers.take(address)


class StreamGate:
    """Admission control for inbound streams; not thread-safe (one trio task at a time)."""

    def __init__(self, limits: StreamLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._buckets = TokenBuckets(limits.rate, limits.burst, limits.max_tracked, clock)
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
        if not self._buckets.take((peer, protocol)):
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
