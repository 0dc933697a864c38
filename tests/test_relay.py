"""Circuit relay v2 on real libp2p hosts (127.0.0.1): checkers' hops, providers'
reservations and ads, the dial helper, and py-libp2p's relay bugs (adapter items 12-14).

"Behind NAT" here means the provider's TCP listeners are closed after it dialled out:
like a NAT, it keeps its outbound connections (to the relay) and nobody can dial it,
so the address its ad still lists is dead and only the relay path reaches it.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from libp2p.host.exceptions import StreamFailure
from libp2p.network.stream.exceptions import StreamError
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.tools.anyio_service import background_trio_service

from node.devnet import DEVNET_DOMAIN, FAST_GOSSIP
from node.identity import Identity
from node.p2p import adapter, dial
from node.p2p.host import HostOptions, P2PError, open_host
from node.p2p.relay import (
    HopSettings,
    RelayClient,
    RelayRefused,
    RelaySettings,
    has_public_address,
    reservation_count,
    reserve,
    run_hop,
)
from node.popw.inventory import Inventory
from node.roles.provider.service import ProviderService, ProviderSettings

ECHO = "/test/echo/1"


@asynccontextmanager
async def hosts(n: int, stack_boot=None):
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            out.append(
                await stack.enter_async_context(
                    open_host(
                        Identity.generate(), network="devnet", domain=DEVNET_DOMAIN,
                        options=HostOptions(dht=False, gossip=FAST_GOSSIP),
                    )  # fmt: skip
                )
            )
        yield out


async def behind_nat(host) -> None:
    """Close the host's listeners: outbound connections stay, nobody can dial in."""
    swarm = host.host.get_network()
    for listener in list(swarm.listeners.values()):
        await listener.close()


async def echo_handler(stream) -> None:
    try:
        data = await stream.read(1024)
        await stream.write(b"echo:" + data)
    finally:
        await stream.close()


async def echo(client, peer, payload: bytes = b"hi") -> bytes:
    with trio.fail_after(5):
        stream = await client.host.new_stream(peer, [ECHO])
        await stream.write(payload)
        return await stream.read(1024)


async def wait_until(pred, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


def circuit(relay, target) -> str:
    return f"{relay.addrs()[0]}/p2p-circuit/p2p/{target.peer_id.to_base58()}"


# the dial helper ---------------------------------------------------------------------


async def test_split_addrs_keeps_only_this_peers_addresses():
    async with hosts(2) as (a, b):
        peer = a.peer_id.to_base58()
        other = b.peer_id.to_base58()
        direct, relayed = dial.split_addrs(
            a.peer_id,
            [
                "/ip4/127.0.0.1/tcp/1",  # gets /p2p/<peer>
                f"/ip4/127.0.0.1/tcp/2/p2p/{peer}",
                f"/ip4/127.0.0.1/tcp/3/p2p/{other}",  # another peer: dropped
                f"/ip4/127.0.0.1/tcp/4/p2p/{other}/p2p-circuit/p2p/{peer}",
                f"/ip4/127.0.0.1/tcp/5/p2p/{peer}/p2p-circuit/p2p/{other}",  # relays elsewhere
                "not a multiaddr",
            ],
        )
        assert direct == [f"/ip4/127.0.0.1/tcp/1/p2p/{peer}", f"/ip4/127.0.0.1/tcp/2/p2p/{peer}"]
        assert relayed == [f"/ip4/127.0.0.1/tcp/4/p2p/{other}/p2p-circuit/p2p/{peer}"]


def test_auto_mode_reserves_only_without_a_public_address():
    assert not has_public_address(["/ip4/127.0.0.1/tcp/1", "/ip4/192.168.1.5/tcp/1", "/ip4/10.0.0.1/tcp/1"])
    assert has_public_address(["/ip4/127.0.0.1/tcp/1", "/ip4/8.8.8.8/tcp/4001"])
    assert not has_public_address(["/ip4/8.8.8.8/tcp/1/p2p/QmX/p2p-circuit/p2p/QmY"])


async def test_nat_provider_is_reached_only_through_the_relay():
    """Direct first (dead: NAT), then the relay address; without it, unreachable."""
    async with hosts(3) as (relay, provider, client), trio.open_nursery() as n:
        await n.start(run_hop, relay, HopSettings())
        await provider.connect(relay.addrs()[0])
        await reserve(provider, relay.peer_id)
        provider.host.set_stream_handler(ECHO, echo_handler)
        stop = CircuitV2Protocol(provider.host, allow_hop=False)
        async with background_trio_service(stop):
            dead = provider.addrs()
            await behind_nat(provider)
            with pytest.raises(P2PError, match="cannot reach"):
                await dial.connect(client, provider.peer_id, dead)  # the relay path removed
            await dial.connect(client, provider.peer_id, dead + [circuit(relay, provider)])
            assert dial.is_relayed(client, provider.peer_id)
            assert await echo(client, provider.peer_id) == b"echo:hi"
            # the stream openers (KaisarHost.ensure_connected) redial through the relay
            # address learned above after the circuit is gone
            await client.host.get_network().close_peer(provider.peer_id)
            async with client.open_stream(provider.peer_id, ECHO) as framed:
                await framed.stream.write(b"again")
                assert await framed.stream.read(1024) == b"echo:again"
            assert dial.is_relayed(client, provider.peer_id)
        n.cancel_scope.cancel()


# reservations and limits ---------------------------------------------------------------


@pytest.mark.parametrize("fixed", [True, False], ids=["adapter", "upstream"])
async def test_relay_at_its_limit_refuses_reservations_until_a_holder_leaves(fixed):
    """Item 14: upstream keeps a departed peer's slot for the whole TTL."""
    limits = HopSettings(max_reservations=1).limits()
    async with hosts(3) as (relay, p1, p2):
        hop = (
            adapter.RelayHopProtocol(relay.host, limits)
            if fixed
            else CircuitV2Protocol(relay.host, limits, allow_hop=True)
        )
        async with background_trio_service(hop):
            await hop.event_started.wait()
            for p in (p1, p2):
                await p.connect(relay.addrs()[0])
            await reserve(p1, relay.peer_id)
            await reserve(p1, relay.peer_id)  # a refresh is not a second reservation
            with pytest.raises(RelayRefused, match="RESOURCE_LIMIT_EXCEEDED"):
                await reserve(p2, relay.peer_id)
            assert reservation_count(hop) == 1
            await p1.host.get_network().close_peer(relay.peer_id)
            await wait_until(lambda: p1.peer_id not in relay.connected_peers())
            if fixed:
                await reserve(p2, relay.peer_id)
                assert reservation_count(hop) == 1
            else:
                with pytest.raises(RelayRefused, match="RESOURCE_LIMIT_EXCEEDED"):
                    await reserve(p2, relay.peer_id)


async def test_ad_names_the_relay_address_while_the_reservation_lives(tmp_path):
    """The signed ad gains the circuit address after the reservation and drops it
    when the relay goes away."""
    relay_scope = trio.CancelScope()

    async def relay_node(*, task_status) -> None:
        with relay_scope:
            async with hosts(1) as (relay,), trio.open_nursery() as rn:
                await rn.start(run_hop, relay, HopSettings())
                task_status.started(relay)
                await trio.sleep_forever()

    ads: list = []

    async def on_ad(env, peer) -> None:
        ads.append(env.body["addrs"])

    async with hosts(2) as (provider, watcher), trio.open_nursery() as n:
        relay = await n.start(relay_node)
        await watcher.subscribe("ads/1", on_ad)
        await watcher.connect(provider.addrs()[0])
        settings = ProviderSettings(
            ad_interval=30.0,  # only changes publish during this test
            relay=RelaySettings(mode="on", relays=(relay.addrs()[0],), check_interval=0.1),
        )
        svc = ProviderService(provider, settings, tmp_path / "p.sqlite",
                              inventory=Inventory(cpu="test", cpu_count=1))  # fmt: skip
        await n.start(svc.run)
        want = circuit(relay, provider)
        await wait_until(lambda: any(want in a for a in ads))
        assert svc.relay is not None and svc.relay.circuit_addrs() == [want]
        assert ads[-1][0] == provider.addrs()[0]  # direct addresses first
        count = len(ads)
        relay_scope.cancel()  # the relay goes away
        await wait_until(lambda: len(ads) > count and not any("p2p-circuit" in x for x in ads[-1]))
        assert ads[-1] == provider.addrs()
        n.cancel_scope.cancel()


# py-libp2p's hop, upstream vs adapter.RelayHopProtocol (items 12, 13) -----------------


@asynccontextmanager
async def nat_provider_behind(hop_factory, limits: RelayLimits, n_clients: int):
    """A relay running ``hop_factory``'s hop, a NAT'd provider reserved on it serving
    ECHO, and ``n_clients`` fresh hosts."""
    async with hosts(2 + n_clients) as (relay, provider, *clients):
        hop = hop_factory(relay.host, limits)
        stop = CircuitV2Protocol(provider.host, allow_hop=False)
        async with background_trio_service(hop), background_trio_service(stop):
            await hop.event_started.wait()
            await provider.connect(relay.addrs()[0])
            await reserve(provider, relay.peer_id)
            provider.host.set_stream_handler(ECHO, echo_handler)
            await behind_nat(provider)
            yield relay, provider, clients


def upstream_hop(host, limits):
    return CircuitV2Protocol(host, limits, allow_hop=True)


HOPS = pytest.mark.parametrize(
    "fixed", [True, False], ids=["adapter", "upstream"]
)


@HOPS
async def test_one_client_leaving_does_not_cut_another_clients_circuit(fixed):
    limits = RelayLimits(duration=0, data=1 << 30, max_circuit_conns=8, max_reservations=4)
    factory = adapter.RelayHopProtocol if fixed else upstream_hop
    async with nat_provider_behind(factory, limits, 2) as (relay, provider, (c1, c2)):
        addr = circuit(relay, provider)
        for c in (c1, c2):
            await dial.connect(c, provider.peer_id, [addr])
            assert await echo(c, provider.peer_id) == b"echo:hi"
        await c1.host.get_network().close_peer(provider.peer_id)
        if not fixed:  # upstream: c1's circuit ending closes c2's circuit
            await wait_until(lambda: provider.peer_id not in c2.connected_peers(), 5)
            return
        # the provider learns c1 left (the EOF is passed on) ...
        await wait_until(lambda: c1.peer_id not in provider.connected_peers(), 5)
        # ... and c2's circuit carries on, on the same connection
        conn = c2.host.get_network().get_connections(provider.peer_id)
        for _ in range(5):
            assert await echo(c2, provider.peer_id, b"still") == b"echo:still"
            await trio.sleep(0.2)
        assert c2.host.get_network().get_connections(provider.peer_id) == conn


@HOPS
async def test_zero_circuit_bytes_means_unlimited(fixed):
    limits = HopSettings(circuit_bytes=0, circuit_duration=0).limits()
    factory = adapter.RelayHopProtocol if fixed else upstream_hop
    async with nat_provider_behind(factory, limits, 1) as (relay, provider, (client,)):
        if not fixed:  # upstream resets the circuit on the provider's first byte
            with pytest.raises(P2PError, match="cannot reach"):
                await dial.connect(client, provider.peer_id, [circuit(relay, provider)])
            return
        await dial.connect(client, provider.peer_id, [circuit(relay, provider)])
        assert await echo(client, provider.peer_id, b"x" * 1000) == b"echo:" + b"x" * 1000


async def test_circuit_byte_limit_resets_that_circuit():
    """A circuit over its byte budget is reset (the relay's own limit, not a bug)."""
    limits = HopSettings(circuit_bytes=64 * 1024).limits()
    async with nat_provider_behind(adapter.RelayHopProtocol, limits, 1) as (relay, provider, (c,)):
        await dial.connect(c, provider.peer_id, [circuit(relay, provider)])
        assert await echo(c, provider.peer_id) == b"echo:hi"
        # reset mid-stream, reset while the next stream is being opened, or no answer
        with pytest.raises((StreamError, StreamFailure, trio.TooSlowError)):
            for _ in range(100):  # ~200 KiB through a 64 KiB circuit
                await echo(c, provider.peer_id, b"y" * 1000)
        await wait_until(lambda: provider.peer_id not in c.connected_peers(), 5)


# configuration ---------------------------------------------------------------------


def test_relay_config_keys_reach_the_services():
    from node.config import ConfigError, from_dict
    from node.roles.checker.service import CheckerSettings

    relay_addr = "/ip4/127.0.0.1/tcp/4002/p2p/16Uiu2HAkzSFT2UcSFk4tyu4CoNQ5sQiEfntpd4VS5t8n2MQ8r4PC"
    cfg = from_dict({
        "provider": {"relay": "on", "relays": [relay_addr], "relay_count": 1},
        "checker": {"relay_max_reservations": 3, "relay_circuit_bytes": 0, "relay_circuit_duration": 60},
    })  # fmt: skip
    assert ProviderSettings.from_config(cfg.provider).relay == RelaySettings("on", (relay_addr,), 1)
    hop = CheckerSettings.from_config(cfg.checker).relay
    assert hop.enabled and (hop.max_reservations, hop.circuit_bytes, hop.circuit_duration) == (3, 0, 60)
    assert from_dict({}).provider.relay == "auto" and from_dict({}).checker.relay is True
    for section, bad, key in [
        ("provider", {"relay": "maybe"}, "provider.relay"),
        ("provider", {"relays": ["/ip4/1.2.3.4/tcp/1"]}, "provider.relays"),
        ("checker", {"relay_max_reservations": 0}, "checker.relay_max_reservations"),
        ("checker", {"relay": "yes"}, "checker.relay"),
    ]:
        with pytest.raises(ConfigError, match=key):
            from_dict({section: bad})


async def test_reservations_are_refreshed_before_they_expire():
    """A 2 s reservation held for 5 s: the client refreshes at half its lifetime."""
    async with hosts(2) as (relay, provider), trio.open_nursery() as n:
        hop = await n.start(run_hop, relay, HopSettings(reservation_ttl=2))
        client = RelayClient(
            provider, RelaySettings(mode="on", relays=(relay.addrs()[0],), check_interval=0.1)
        )
        await n.start(client.run)
        await wait_until(lambda: relay.peer_id in client.held)
        first = client.held[relay.peer_id].expires
        await trio.sleep(5)
        assert relay.peer_id in client.held and client.held[relay.peer_id].expires >= first + 2
        assert hop.resource_manager.get_reservation(provider.peer_id) is not None
        assert reservation_count(hop) == 1
        n.cancel_scope.cancel()
