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


# gossip budgets ------------------------------------------------------------------------


def test_gossip_gate_buckets_per_forwarder_and_signer():
    from node.p2p.limits import GossipGate, GossipLimits

    clock = Clock()
    gate = GossipGate(GossipLimits(forwarder_rate=1, forwarder_burst=2, signer_rate=1, signer_burst=3), clock)
    assert [gate.forwarder_ok("p") for _ in range(3)] == [True, True, False]
    assert gate.forwarder_ok("q")
    assert [gate.signer_ok("0xA") for _ in range(4)] == [True, True, True, False]
    clock.t = 1.0
    assert gate.forwarder_ok("p") and gate.signer_ok("0xA")


async def test_valid_gossip_flood_from_one_key_is_capped_while_honest_gossip_flows():
    from node.devnet import start_network, wait_for_mesh
    from node.p2p.limits import GossipGate, GossipLimits

    async with start_network(3) as (node, flooder, honest):
        node.gossip_gate = GossipGate(GossipLimits(signer_rate=1, signer_burst=6))  # the honest 5 fit
        got: dict[str, int] = {}

        async def on(env, peer):
            got[env.signer] = got.get(env.signer, 0) + 1

        async def ignore(env, peer):
            pass

        await node.subscribe("status/1", on)  # counted at the node under attack only
        for h in (flooder, honest):
            await h.subscribe("status/1", ignore)
        await wait_for_mesh([node, flooder, honest], "status/1")
        topic = node.topic("status/1")
        before = metrics.GOSSIP_REJECTED.labels(node.address[:10], topic, "rate-signer")._value.get()

        def hb(h):
            return h.sign("Heartbeat", {"role": "provider", "peer": h.peer_id.to_base58(), "addrs": []})

        t0 = trio.current_time()
        for i in range(100):  # valid, signed, fresh: useless only by volume
            await flooder.publish("status/1", hb(flooder))
            if i % 20 == 0:
                await honest.publish("status/1", hb(honest))
            await trio.sleep(0.005)
        await wait_until_(lambda: got.get(honest.address, 0) >= 5)
        elapsed = trio.current_time() - t0
        # burst 6 plus 1/s while the flood ran (and a little slack for scheduling)
        assert got.get(flooder.address, 0) <= 6 + 1 * elapsed + 2, (got, elapsed)
        rejected = metrics.GOSSIP_REJECTED.labels(node.address[:10], topic, "rate-signer")._value.get() - before
        # the rest never reach the validator: py-libp2p scores down a peer whose messages
        # are rejected and drops its later ones unread
        assert rejected > 0, (rejected, got, elapsed)
        assert got[honest.address] == 5


async def wait_until_(pred, timeout=10):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.02)


async def test_malformed_multiaddrs_in_bootstrap_and_dials_fail_cleanly():
    from node.bench_hostile import BAD_ADDRS

    opts = HostOptions(dht=False, bootstrap=BAD_ADDRS)
    async with open_host(Identity.generate(), network="devnet", domain=DEVNET_DOMAIN, options=opts) as host:
        for addr in BAD_ADDRS + ["", "not even a path", "/ip4/127.0.0.1/tcp/1"]:
            with trio.fail_after(15):
                try:
                    await host.connect(addr)
                except P2PError:
                    pass
        await trio.sleep(0.5)  # the bootstrap dialers have failed and logged by now
        assert host.addrs() and host.gate.open_streams() == 0


async def test_a_node_describes_only_itself():
    """A heartbeat, ad or status names where to dial its sender (``peer``): one that names
    another node is rejected, so a provider cannot point PoPW challenges or tunnels at
    someone else's machine."""
    from node.devnet import start_network, wait_for_mesh

    async with start_network(3) as (node, liar, other):
        got = []

        async def on(env, peer):
            got.append(env.body["peer"])

        async def ignore(env, peer):
            pass

        await node.subscribe("status/1", on)
        for h in (liar, other):
            await h.subscribe("status/1", ignore)
        await wait_for_mesh([node, liar, other], "status/1")
        label, topic = node.address[:10], node.topic("status/1")
        liar.pubsub.remove_topic_validator(topic)  # a malicious node skips its own checks
        before = metrics.GOSSIP_REJECTED.labels(label, topic, "publisher")._value.get()
        for peer in (other.peer_id.to_base58(), "x", liar.peer_id.to_base58()):
            await liar.publish("status/1", liar.sign("Heartbeat", {"role": "provider", "peer": peer, "addrs": []}))
        await wait_until_(lambda: got)
        await trio.sleep(0.3)
        assert got == [liar.peer_id.to_base58()]
        assert metrics.GOSSIP_REJECTED.labels(label, topic, "publisher")._value.get() - before == 2
