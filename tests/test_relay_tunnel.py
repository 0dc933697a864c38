"""A provider behind NAT serves a real container through a checker's relay.

Real libp2p hosts on 127.0.0.1, the embedded chain, the real Docker Engine. The
provider's listeners are closed after it dialled the relay ("behind NAT"; see
tests/test_relay.py), so its ad's direct address is dead: the deploy from a
checker-like peer, the owner's status query and the HTTP tunnel through
``Client.connect`` can only go through the circuit address the ad carries. Without the
provider's reservation (``relay = "off"``) the same client cannot reach it at all.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import pytest

pytest.register_assert_rewrite("chain_fixtures")
import trio  # noqa: E402
from chain_fixtures import GPU  # noqa: E402
from test_relay import behind_nat, hosts, wait_until  # noqa: E402

from node.client.api import Client  # noqa: E402
from node.consensus.qc import AssignQC  # noqa: E402
from node.p2p import dial  # noqa: E402
from node.p2p.host import HostOptions, P2PError, open_host  # noqa: E402
from node.p2p.relay import HopSettings, RelaySettings, run_hop  # noqa: E402
from node.popw.inventory import Inventory  # noqa: E402
from node.roles.checker.service import Ad, Assigned, CheckerService  # noqa: E402
from node.roles.provider import client as pclient  # noqa: E402
from node.roles.provider import tunnel as ptunnel  # noqa: E402
from node.roles.provider.images import DEMO_HTTP_IMAGE, DEMO_HTTP_PORT  # noqa: E402
from node.roles.provider.runtime import Limits  # noqa: E402
from node.roles.provider.service import ProviderService, ProviderSettings  # noqa: E402

pytest_plugins = ["chain_fixtures"]
pytestmark = pytest.mark.docker


def settings(mode: str, relay_addr: str) -> ProviderSettings:
    return ProviderSettings(
        ad_interval=0.5,
        status_interval=0.5,
        chain_poll_interval=0.5,
        limits=Limits(memory_bytes=64 * 1024 * 1024, cpus=0.5, pids=64),
        relay=RelaySettings(mode=mode, relays=(relay_addr,), check_interval=0.2),
    )


@asynccontextmanager
async def nat_world(world, runtime, tmp_path, mode: str):
    """relay (a checker's hop, relays gossip), NAT'd provider, owner's Client."""
    async with hosts(1) as (relay,), trio.open_nursery() as n:
        await n.start(run_hop, relay, HopSettings())

        async def ignore(env, peer) -> None:
            return None

        await relay.subscribe("ads/1", ignore)  # a checker listens: gossip flows through it
        await relay.subscribe("status/1", ignore)
        boot = HostOptions(dht=False, bootstrap=[relay.addrs()[0]])
        async with (
            open_host(world.providers[0], network=relay.network, domain=relay.domain, options=boot) as p,
            open_host(world.owner, network=relay.network, domain=relay.domain, options=boot) as c,
        ):
            await wait_until(lambda: relay.peer_id in p.connected_peers() and relay.peer_id in c.connected_peers())
            dead = p.addrs()  # what it listened on: a private address nobody can dial
            await behind_nat(p)
            svc = ProviderService(
                p, settings(mode, relay.addrs()[0]), tmp_path / "p.sqlite", chain=world.kc,
                runtime=runtime, inventory=Inventory(cpu="test", cpu_count=2),
            )  # fmt: skip
            await n.start(svc.run)
            client = Client(world.owner, c, world.kc, ad_wait=5.0, poll_interval=0.2)
            await client.start()
            yield relay, svc, client, dead
        n.cancel_scope.cancel()


async def http_get(port: int, path: str) -> bytes:
    with trio.fail_after(15):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        out = b""
        while chunk := await tcp.receive_some(65536):
            out += chunk
        await tcp.aclose()
        return out


async def test_nat_provider_deploys_and_serves_http_through_a_relay(world, container_runtime, tmp_path):
    me = world.providers[0].address
    async with nat_world(world, container_runtime, tmp_path, "on") as (relay, svc, client, dead):
        peer = svc.host.peer_id
        await wait_until(
            lambda: (o := client.offers.get(me)) is not None and any("p2p-circuit" in a for a in o.addrs)
        )
        offer = client.offers.get(me)
        assert offer is not None and all("p2p-circuit" in a for a in offer.addrs)
        job = world.create_job(duration=600, image=DEMO_HTTP_IMAGE, port=DEMO_HTTP_PORT, gpu=GPU)
        world.assign(job, 0, me, world.checkers[:2])

        # the checker's deploy sender: the ad's dead direct address, then its relay address
        boot = HostOptions(dht=False, bootstrap=[relay.addrs()[0]])
        async with open_host(world.checkers[0], network=relay.network, domain=relay.domain, options=boot) as k:
            checker = CheckerService(k, world.checkers[0], world.kc, tmp_path / "checker")
            now = time.time()
            checker.ads[me] = Ad(me, peer.to_base58(), dead + list(offer.addrs), "cpu", 1, 1, True, now, now + 60)
            checker.assigned[job] = Assigned(me, 0, 1, now)
            sigs = world.assign_sigs(job, 0, me, world.checkers[:2])
            await checker._deploy(AssignQC(job, 0, me, tuple(sigs)))
            assert checker.assigned[job].deployed
            assert dial.is_relayed(k, peer)

        # the owner's status stream and an HTTP tunnel through Client.connect
        dep = await client.wait_deployed(job, timeout=30)
        assert dep.provider == me
        view = await client.status(job)
        assert view.provider_status is not None and view.provider_status["state"] == "running"
        async with trio.open_nursery() as n:
            port = await n.start(client.connect, job, 0)
            answers = [await http_get(port, f"/cgi-bin/echo?q{i}") for i in range(3)]
            n.cancel_scope.cancel()
        assert all(b"200 OK" in a and f"job={job}".encode() in a for a in answers), answers
        assert b"query=q2" in answers[2]
        # a relayed peer has no address of the provider for the direct data path
        # (docs/ARCHITECTURE.md, "Tunnel data path"): the bytes stay on the circuit
        async with pclient.open_tunnel(client.host, peer, world.owner, world.kc.domain, job) as t:
            assert t.path == "libp2p"
            await t.write(b"GET / HTTP/1.0\r\n\r\n")
            assert b"200 OK" in await t.read_all()
        assert dial.is_relayed(client.host, peer)  # never a direct connection
        # ... and that says nothing about the provider's direct port: no 10-minute skip
        assert str(peer) not in ptunnel._direct_failed
        await world.kc.close_job(world.owner, job)


async def test_without_a_reservation_the_nat_provider_is_unreachable(world, container_runtime, tmp_path):
    """The same setup with relay = "off": the ad has no relay address, nobody gets in."""
    me = world.providers[0].address
    async with nat_world(world, container_runtime, tmp_path, "off") as (relay, svc, client, dead):
        await wait_until(lambda: client.offers.get(me) is not None)
        offer = client.offers.get(me)
        assert offer is not None and not any("p2p-circuit" in a for a in offer.addrs)
        with pytest.raises(P2PError, match="cannot reach"):
            await dial.connect(client.host, svc.host.peer_id, dead + list(offer.addrs))
