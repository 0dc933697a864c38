"""The light client against a real provider: real libp2p, the embedded chain, real Docker.

No checker role here: the test certifies the assignment exactly as checkers would
(AssignVotes signed by genesis checker keys, ``KaisarChain.assign``, then the deploy
command with the same certificate to the provider).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest

pytest.register_assert_rewrite("chain_fixtures")
import trio  # noqa: E402
from chain_fixtures import GPU, ident  # noqa: E402

from node.client import ClientError, JobEnded  # noqa: E402
from node.client.api import Client  # noqa: E402
from node.client.forward import Forwarder  # noqa: E402
from node.devnet import start_network  # noqa: E402
from node.popw.inventory import Inventory  # noqa: E402
from node.roles.provider import client as pclient  # noqa: E402
from node.roles.provider.images import DEMO_HTTP_IMAGE, DEMO_HTTP_PORT  # noqa: E402
from node.roles.provider.runtime import Limits  # noqa: E402
from node.roles.provider.service import ProviderService, ProviderSettings  # noqa: E402

pytest_plugins = ["chain_fixtures"]
pytestmark = pytest.mark.docker

SETTINGS = ProviderSettings(
    ad_interval=0.3,
    max_gpus=1,
    status_interval=0.3,
    chain_poll_interval=0.3,
    max_tunnels_per_job=4,
    limits=Limits(memory_bytes=64 * 1024 * 1024, cpus=0.5, pids=64),
)


@asynccontextmanager
async def client_world(world, container_runtime, tmp_path):
    """A provider (key providers[0]) running ProviderService and the owner's Client."""
    async with start_network(2, identities=[world.providers[0], world.owner]) as (phost, chost):
        async with trio.open_nursery() as nursery:
            svc = provider_service(world, phost, container_runtime, tmp_path / "p.sqlite")
            await nursery.start(svc.run)
            client = Client(world.owner, chost, world.kc, ad_wait=10.0, poll_interval=0.2)
            await client.start()
            yield svc, client, nursery
            nursery.cancel_scope.cancel()


def provider_service(world, host, runtime, db, settings=SETTINGS) -> ProviderService:
    """ProviderService for ``host`` (key providers[i]) with the test settings."""
    return ProviderService(
        host, settings, db, chain=world.kc, runtime=runtime, inventory=Inventory(cpu="test", cpu_count=2)
    )


async def certify(world, host, job_id: int, provider_peer) -> None:
    """What the checker quorum does: QC on chain, then the deploy command to the provider
    (sent from ``host``)."""
    provider = world.providers[0].address
    sigs = world.assign_sigs(job_id, 0, provider, world.checkers[:2])
    await world.kc.assign(world.outsider, job_id, 0, provider, sigs)
    frame = {"t": "deploy", "job_id": job_id, "round": 0, "provider": provider, "sigs": sigs}
    reply = await pclient.send_deploy(host, provider_peer, frame)
    assert reply["t"] == "deployed", reply


async def http_get(port: int, path: str) -> bytes:
    """An HTTP/1.0 request through the local port, half-closing after the request."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    async with tcp:
        await tcp.send_all(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        await tcp.send_eof()  # half-close: the answer must still come back
        out = bytearray()
        with trio.fail_after(15):
            try:
                while chunk := await tcp.receive_some(65536):
                    out += chunk
            except trio.BrokenResourceError:  # closed unread: a refused connection
                pass
        return bytes(out)


async def test_buy_wait_connect_logs_close(world, container_runtime, tmp_path):
    owner = world.owner.address
    async with client_world(world, container_runtime, tmp_path) as (svc, client, nursery):
        job = await client.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, hours=1)
        view = await client.status(job)
        assert view.state == "open" and view.provider is None

        lines: list[str] = []
        async with trio.open_nursery() as n:

            async def wait() -> None:
                dep = await client.wait_deployed(job, timeout=30, progress=lines.append)
                assert dep.provider == world.providers[0].address and dep.state in (
                    "deployed",
                    "running",
                )
                assert dep.container_port == DEMO_HTTP_PORT and len(dep.qc_signers) == 2

            n.start_soon(wait)
            with trio.fail_after(10):
                while "waiting for assignment" not in lines:
                    await trio.sleep(0.05)
            await certify(world, client.host, job, svc.host.peer_id)
        assert lines[0] == "waiting for assignment" and lines[-1] == "deployed"
        assert any(line.startswith("assigned to 0x") and line.endswith("round 0") for line in lines)

        # connect: two requests through 127.0.0.1, each its own tunnel, both answered.
        port = await nursery.start(client.connect, job, 0)
        pages = [await http_get(port, f"/cgi-bin/echo?q{i}") for i in (1, 2)]
        for i, page in enumerate(pages, 1):
            assert (
                b"200 OK" in page
                and f"query=q{i}".encode() in page
                and f"job={job}".encode() in page
            )

        # Another key cannot use this job: the API refuses, and a raw tunnel attempt with
        # a stranger's token is refused by the provider (the local connection just closes).
        stranger = Client(ident("stranger"), client.host, world.kc)
        with pytest.raises(ClientError, match=f"job {job} belongs to {owner}"):
            await stranger.wait_deployed(job, timeout=1)
        fwd = Forwarder(stranger, job)
        fwd.route = await client.wait_deployed(job, timeout=5)
        fwd._checked_at = 1e18  # use this route, do not re-read it
        sport = await nursery.start(fwd.serve_listening, 0)
        assert await http_get(sport, "/cgi-bin/echo?stolen") == b""
        assert fwd.refused == 1  # the provider said no to the stranger's token

        view = await client.status(job)
        assert view.state == "assigned" and view.provider_status["state"] == "running"
        assert [v.job_id for v in await client.ls()] == [job]
        logs = b"".join([c async for c in client.logs(job)])
        assert b"kaisar-demo-http listening" in logs

        # close: refund of the unused part, balance up by exactly that minus gas.
        before = world.h.balance(owner)
        deposit = (await world.kc.get_job(job)).deposit
        result = await client.close(job)
        assert result.refund > 0 and result.refund + result.provider_paid == deposit
        assert world.h.balance(owner) - before == result.refund - result.tx_fee
        with pytest.raises(JobEnded, match="already closed"):
            await client.close(job)


async def test_connect_follows_the_job_to_a_new_provider(
    world, container_runtime, docker_engine, tmp_path
):
    """Provider 0 fails (certified), the job is reassigned to provider 1: the same local
    port now reaches provider 1's container."""
    import uuid

    from docker_fixtures import remove_labelled

    from node.roles.provider.runtime import ContainerRuntime

    p0, p1 = world.providers[0].address, world.providers[1].address
    node1 = f"test-{uuid.uuid4().hex[:12]}"
    runtime1 = ContainerRuntime(node1, docker_host=docker_engine.host, stop_timeout=2)
    idents = [world.providers[0], world.providers[1], world.owner]
    try:
        async with start_network(3, identities=idents) as (h0, h1, chost):
            async with trio.open_nursery() as nursery:
                scope0 = trio.CancelScope()

                async def run0(task_status=trio.TASK_STATUS_IGNORED) -> None:
                    with scope0:
                        svc = provider_service(world, h0, container_runtime, tmp_path / "p0.sqlite")
                        await svc.run(task_status=task_status)

                await nursery.start(run0)
                svc1 = provider_service(world, h1, runtime1, tmp_path / "p1.sqlite")
                await nursery.start(svc1.run)
                client = Client(world.owner, chost, world.kc, ad_wait=10.0, poll_interval=0.2)
                await client.start()
                job = await client.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, hours=1)
                for h in (h0, h1):  # the test plays the checkers from the client's host
                    await chost.connect(h.addrs()[0])
                await certify(world, client.host, job, h0.peer_id)
                fwd = Forwarder(client, job, recheck=0.2)
                port = await nursery.start(fwd.serve, 0)
                assert b"query=before" in await http_get(port, "/cgi-bin/echo?before")
                assert fwd.route is not None and fwd.route.provider == p0

                # provider 0 dies; the checkers certify its failure and reassign round 1
                scope0.cancel()
                fail = world.failure_sigs(job, 0, p0, world.checkers[:2])
                await world.kc.fail(world.outsider, job, 0, p0, fail)
                sigs = world.assign_sigs(job, 1, p1, world.checkers[:2])
                await world.kc.assign(world.outsider, job, 1, p1, sigs)
                frame = {"t": "deploy", "job_id": job, "round": 1, "provider": p1, "sigs": sigs}
                assert (await pclient.send_deploy(chost, h1.peer_id, frame))["t"] == "deployed"

                page = await http_get(port, "/cgi-bin/echo?after")
                assert b"query=after" in page and f"job={job}".encode() in page
                assert fwd.route.provider == p1 and fwd.route.round == 1
                nursery.cancel_scope.cancel()
    finally:
        runtime1.close()
        remove_labelled(docker_engine.client, node1)


async def test_wait_learns_deployment_from_gossip_and_connect_reuses_it(
    world, container_runtime, tmp_path
):
    """With the provider's /kaisar/status/1 handler gone, wait_deployed still verifies
    the deployment: from the provider's gossiped signed status and the chain's QC. A
    second wait for the same assignment (what connect does) reuses that verification
    while the status is fresh, and verifies again once it has expired."""
    from node.roles.provider.messages import NOTIFY_PROTOCOL
    from node.roles.provider.service import STATUS_PROTOCOL

    async with client_world(world, container_runtime, tmp_path) as (svc, client, nursery):
        svc.host.host.remove_stream_handler(STATUS_PROTOCOL)
        client.host.host.remove_stream_handler(NOTIFY_PROTOCOL)  # no push either
        job = await client.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, hours=1)
        await certify(world, client.host, job, svc.host.peer_id)
        dep = await client.wait_deployed(job, timeout=30)
        assert dep.provider == world.providers[0].address and dep.state in ("deployed", "running")
        assert len(dep.qc_signers) == 2  # the chain's QC, checked here
        assert await client.wait_deployed(job, timeout=5) is dep  # reused, not re-verified
        client._verified[job] = (dep, 0, 0.0)  # the status it rested on has expired
        again = await client.wait_deployed(job, timeout=30)
        assert again is not dep and (again.round, again.provider) == (dep.round, dep.provider)


async def test_connect_dials_a_provider_known_only_from_gossip(world, container_runtime, tmp_path):
    """The owner's host is connected to a gossip peer only, never to the provider: the
    deployment verifies from the gossiped status + the chain's QC, so nothing dialled the
    provider. A tunnel must then dial it with its ad's addresses (a bare peer ID has
    none: the churn soak lost a job whose every tunnel failed with "no direct address")."""
    from node.devnet import DEVNET_DOMAIN, DEVNET_NETWORK, FAST_GOSSIP
    from node.p2p.host import HostOptions, open_host

    async def ignore(env, peer) -> None:
        return None

    async with start_network(2, identities=[ident("gossip-middle"), world.providers[0]]) as (
        middle,
        phost,
    ):
        for suffix in ("ads/1", "status/1"):  # the middle relays the provider's gossip
            await middle.subscribe(suffix, ignore)
        opts = HostOptions(bootstrap=[middle.addrs()[0]], gossip=FAST_GOSSIP, dht=False)
        async with open_host(world.owner, network=DEVNET_NETWORK, domain=DEVNET_DOMAIN, options=opts) as chost:
            async with trio.open_nursery() as nursery:
                svc = provider_service(world, phost, container_runtime, tmp_path / "p.sqlite")
                await nursery.start(svc.run)
                client = Client(world.owner, chost, world.kc, ad_wait=10.0, poll_interval=0.2)
                await client.start()
                job = await client.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, hours=1)
                # the deploy comes from the middle: the owner's host never meets the provider
                await certify(world, middle, job, phost.peer_id)
                await client.wait_deployed(job, timeout=30)  # verified from gossip alone
                if phost.peer_id in chost.connected_peers():
                    # py-libp2p's auto-connector (low watermark 8 connections) may have
                    # dialled it meanwhile (once in a full-suite run): cut that, so the
                    # tunnel below has to dial the provider itself
                    await chost.host.get_network().close_peer(phost.peer_id)
                assert phost.peer_id not in chost.connected_peers()
                port = await nursery.start(client.connect, job, 0)
                page = await http_get(port, "/cgi-bin/echo?gossip")
                assert b"200 OK" in page and f"job={job}".encode() in page, page
                nursery.cancel_scope.cancel()


async def test_provider_pushes_the_deployment_to_the_waiting_owner(world, container_runtime, tmp_path):
    """The provider pushes its signed "deployed" status and QC copy to the owner's
    connected peer the moment the container is up: a client that hears no gossip, polls
    the chain once a minute and gets no status answer still returns at once."""
    from node.roles.provider.messages import NOTIFY_PROTOCOL
    from node.roles.provider.service import STATUS_PROTOCOL

    async with start_network(2, identities=[world.providers[0], world.owner]) as (phost, chost):
        async with trio.open_nursery() as nursery:
            svc = provider_service(world, phost, container_runtime, tmp_path / "p.sqlite")
            await nursery.start(svc.run)
            phost.host.remove_stream_handler(STATUS_PROTOCOL)
            client = Client(world.owner, chost, world.kc, poll_interval=60.0)
            chost.set_handler(NOTIFY_PROTOCOL, client._on_push)  # no gossip: no start()
            job = await world.kc.create_job(
                world.owner, spec_hash=b"\x01" * 32, gpu_class=GPU, count=1,
                image=DEMO_HTTP_IMAGE, port=DEMO_HTTP_PORT, duration=3600, price_per_second=10**9,
            )  # fmt: skip
            got = []
            async with trio.open_nursery() as n:

                async def wait() -> None:
                    got.append(await client.wait_deployed(job, timeout=30))

                n.start_soon(wait)
                await trio.sleep(0.2)
                await certify(world, client.host, job, phost.peer_id)
            dep = got[0]
            assert dep.provider == world.providers[0].address and dep.state == "deployed"
            assert client.last_status_source == "push"
            # the provider counts the push once its stream has closed, which can be just
            # after the client took the frame and returned
            with trio.fail_after(5):
                while svc.owner_notified < 1:
                    await trio.sleep(0.02)
            assert svc.owner_notified == 1
            nursery.cancel_scope.cancel()


async def test_close_stops_the_container_at_once_not_at_the_next_chain_poll(
    world, container_runtime, tmp_path
):
    """The owner's client tells the provider of the close (/kaisar/closed/1); the provider
    re-reads the job on chain and stops the container now. Its own chain poll is an hour
    here, so without the notice the container would run on and the slot stay taken."""
    from dataclasses import replace

    from node.roles.provider.client import ProviderRefused, notify_closed

    settings = replace(SETTINGS, chain_poll_interval=3600.0)
    async with start_network(2, identities=[world.providers[0], world.owner]) as (phost, chost):
        async with trio.open_nursery() as nursery:
            svc = provider_service(world, phost, container_runtime, tmp_path / "p.sqlite", settings)
            await nursery.start(svc.run)
            client = Client(world.owner, chost, world.kc, ad_wait=10.0, poll_interval=0.2)
            await client.start()
            job = await client.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, hours=1)
            await certify(world, client.host, job, svc.host.peer_id)
            await client.wait_deployed(job, timeout=30)

            # only the owner's token counts, and the chain decides: the job is still open
            with pytest.raises(ProviderRefused, match="not signed by the job owner"):
                await notify_closed(chost, phost.peer_id, ident("stranger"), world.kc.domain, job)
            assert await notify_closed(chost, phost.peer_id, world.owner, world.kc.domain, job) == "running"

            result = await client.close(job)
            assert result.provider_state == "stopped"
            assert svc.state.get_job(job).state == "stopped"
            info = await container_runtime.status(job)
            assert info is not None and not info.running  # stopped, kept for its logs
            with trio.fail_after(5):  # and the next ad offers the slot again
                while client.offers.get(world.providers[0].address).gpus_free != 1:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
