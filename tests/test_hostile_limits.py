"""The per-peer stream gate (node/p2p/limits.py): the rule, then on real libp2p hosts."""

from contextlib import AsyncExitStack

import trio

from node import metrics
from node.devnet import DEVNET_DOMAIN
from node.identity import Identity
from node.p2p.frames import FrameError
from node.p2p.host import HostOptions, P2PError, open_host
from node.p2p.limits import PEER_CONCURRENCY, RATE, TOTAL_CONCURRENCY, StreamGate, StreamLimits

ECHO = "/kaisar/test-echo/1"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# the rule --------------------------------------------------------------------------


def test_bucket_allows_burst_then_rate_per_peer_and_protocol():
    clock = Clock()
    gate = StreamGate(StreamLimits(rate=2, burst=3, per_peer=100, total=1000), clock)
    got = [gate.admit("a", "/p") for _ in range(5)]
    assert got == [None, None, None, RATE, RATE]
    # another protocol and another peer have their own buckets
    assert gate.admit("a", "/q") is None
    assert gate.admit("b", "/p") is None
    clock.t = 1.0  # two tokens back after one second at rate 2
    assert [gate.admit("a", "/p") for _ in range(3)] == [None, None, RATE]


def test_concurrency_per_peer_and_total_and_release():
    gate = StreamGate(StreamLimits(rate=1000, burst=1000, per_peer=2, total=3), Clock())
    assert gate.admit("a", "/p") is None and gate.admit("a", "/p") is None
    assert gate.admit("a", "/p") == PEER_CONCURRENCY
    assert gate.admit("b", "/p") is None
    assert gate.admit("c", "/p") == TOTAL_CONCURRENCY
    gate.release("a")
    assert gate.open_streams("a") == 1 and gate.open_streams() == 2
    assert gate.admit("c", "/p") is None
    for p in ("a", "b", "c"):
        gate.release(p)
    assert gate.open_streams() == 0 and gate._open == {}


def test_refused_by_concurrency_does_not_spend_tokens():
    clock = Clock()
    gate = StreamGate(StreamLimits(rate=0.01, burst=2, per_peer=1, total=10), clock)
    assert gate.admit("a", "/p") is None
    for _ in range(10):
        assert gate.admit("a", "/p") == PEER_CONCURRENCY
    gate.release("a")
    assert gate.admit("a", "/p") is None  # the second token is still there


def test_bucket_memory_is_bounded():
    gate = StreamGate(StreamLimits(max_tracked=100), Clock())
    for i in range(5000):
        assert gate.admit(f"peer{i}", "/p") is None
        gate.release(f"peer{i}")
    assert len(gate._buckets) == 100 and gate._open == {}


# real hosts ---------------------------------------------------------------------------


async def _hosts(stack, server_limits: StreamLimits):
    server = await stack.enter_async_context(
        open_host(
            Identity.generate(),
            network="devnet",
            domain=DEVNET_DOMAIN,
            options=HostOptions(dht=False, stream_limits=server_limits),
        )
    )
    peers = []
    for _ in range(2):
        h = await stack.enter_async_context(
            open_host(Identity.generate(), network="devnet", domain=DEVNET_DOMAIN, options=HostOptions(dht=False))
        )
        await h.connect(server.addrs()[0])
        peers.append(h)
    return server, peers


def limited(server, reason):
    return metrics.STREAMS_LIMITED.labels(server.address[:10], ECHO, reason)._value.get()


async def _try_request(host, peer_id, obj):
    try:
        return await host.request(peer_id, ECHO, obj, timeout=5)
    except (FrameError, P2PError):
        return None


async def test_flooding_peer_is_rate_limited_while_another_peer_is_served():
    async with AsyncExitStack() as stack:
        server, (flooder, honest) = await _hosts(
            stack, StreamLimits(rate=2, burst=5, per_peer=64, total=1024)
        )
        served: list[str] = []

        async def echo(framed, peer):
            obj = await framed.recv(timeout=5)
            served.append(str(peer))
            await framed.send(obj)

        server.set_handler(ECHO, echo)
        before = limited(server, RATE)
        results = []

        async def one(i):
            results.append(await _try_request(flooder, server.peer_id, i))

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        ok = [r for r in results if r is not None]
        # burst 5 plus at most a few refills at 2/s while the flood ran
        assert 5 <= len(ok) <= 12, len(ok)
        assert limited(server, RATE) - before == 40 - len(ok)
        # the honest peer still gets through at once
        with trio.fail_after(5):
            assert await honest.request(server.peer_id, ECHO, "hi") == "hi"
        assert served.count(str(honest.peer_id)) == 1
        assert server.gate.open_streams() == 0


async def test_slow_loris_peer_cannot_hold_more_than_its_share():
    async with AsyncExitStack() as stack:
        server, (loris, honest) = await _hosts(
            stack, StreamLimits(rate=1000, burst=1000, per_peer=3, total=1024)
        )

        async def echo(framed, peer):
            obj = await framed.recv(timeout=30)  # the attacker never sends: held for 30 s
            await framed.send(obj)

        server.set_handler(ECHO, echo)
        before = limited(server, PEER_CONCURRENCY)
        held = []
        for _ in range(3):
            s = await loris.host.new_stream(server.peer_id, [ECHO])
            await s.write(b"\x00")  # one byte of a frame header, then nothing
            held.append(s)
        with trio.fail_after(5):
            while server.gate.open_streams(str(loris.peer_id)) < 3:
                await trio.sleep(0.01)
        # a fourth stream from the same peer is reset unread
        assert await _try_request(loris, server.peer_id, "x") is None
        assert limited(server, PEER_CONCURRENCY) - before == 1
        with trio.fail_after(5):
            assert await honest.request(server.peer_id, ECHO, "hi") == "hi"
        for s in held:
            await s.reset()
        with trio.fail_after(5):
            while server.gate.open_streams() != 0:
                await trio.sleep(0.01)


def test_config_keys_reach_the_gate():
    from node.config import ConfigError, from_dict
    from node.runner import host_options

    cfg = from_dict({"p2p": {"stream_rate": 3.5, "stream_burst": 7, "max_streams_per_peer": 5,
                             "max_inbound_streams": 50}})
    assert host_options(cfg).stream_limits == StreamLimits(rate=3.5, burst=7, per_peer=5, total=50)
    for bad in ({"stream_rate": 0}, {"stream_burst": 0}, {"max_streams_per_peer": 0},
                {"max_streams_per_peer": 10, "max_inbound_streams": 5}):
        try:
            from_dict({"p2p": bad})
        except ConfigError as exc:
            assert str(exc).startswith("p2p.")
        else:
            raise AssertionError(f"{bad} accepted")
