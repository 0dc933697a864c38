"""Provider role end to end: real libp2p on 127.0.0.1, the real Docker Engine, the embedded chain."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import pytest

pytest.register_assert_rewrite("chain_fixtures")
import trio  # noqa: E402
from chain_fixtures import GPU, ident  # noqa: E402

from node.devnet import start_network  # noqa: E402
from node.popw.inventory import Inventory  # noqa: E402
from node.roles.provider import client as pclient  # noqa: E402
from node.roles.provider import messages as msg  # noqa: E402
from node.roles.provider.images import DEMO_HTTP_IMAGE, DEMO_HTTP_PORT  # noqa: E402
from node.roles.provider.runtime import Limits  # noqa: E402
from node.roles.provider.service import ProviderService, ProviderSettings  # noqa: E402
from node.roles.provider.state import ProviderState  # noqa: E402

pytest_plugins = ["chain_fixtures"]
pytestmark = pytest.mark.docker

SETTINGS = ProviderSettings(
    ad_interval=0.3,
    max_gpus=1,
    status_interval=0.3,
    chain_poll_interval=0.3,
    max_tunnels_per_job=2,
    limits=Limits(memory_bytes=64 * 1024 * 1024, cpus=0.5, pids=64),
)


class Inbox:
    """Gossip collected by the client host."""

    def __init__(self) -> None:
        self.items: list = []
        self._event = trio.Event()

    async def on(self, env, peer) -> None:
        self.items.append(env)
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, pred, timeout: float = 10.0):
        with trio.fail_after(timeout):
            while True:
                for env in reversed(self.items):
                    if pred(env):
                        return env
                await self._event.wait()


@asynccontextmanager
async def provider_world(world, container_runtime, state_path):
    """Provider host (key = providers[0]) + owner host with ads/status inboxes."""
    async with start_network(2, identities=[world.providers[0], world.owner]) as (phost, chost):
        ads, statuses = Inbox(), Inbox()
        await chost.subscribe("ads/1", ads.on)
        await chost.subscribe("status/1", statuses.on)
        async with trio.open_nursery() as nursery:
            svc = ProviderService(
                phost, SETTINGS, state_path, chain=world.kc, runtime=container_runtime,
                inventory=Inventory(cpu="test", cpu_count=2),
            )
            await nursery.start(svc.run)
            yield svc, phost, chost, ads, statuses
            nursery.cancel_scope.cancel()


def ad_from(svc, free):
    return lambda e: e.type == "ProviderAd" and e.signer == svc.address and e.body["gpus_free"] == free


def status_of(job_id, state):
    return lambda e: e.type == "JobStatus" and e.body["job_id"] == job_id and e.body["state"] == state


def qc_frame(world, job_id, provider, signers, round_=0):
    sigs = world.assign_sigs(job_id, round_, provider, signers)
    return {"t": "deploy", "job_id": job_id, "round": round_, "provider": provider, "sigs": sigs}


def http_job(world) -> int:
    return world.create_job(duration=600, image=DEMO_HTTP_IMAGE, port=DEMO_HTTP_PORT, gpu=GPU)


async def http_get(chost, peer, owner, domain, job_id, path="/cgi-bin/echo?hello"):
    async with pclient.open_tunnel(chost, peer, owner, domain, job_id) as t:
        await t.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        return await t.read_all()


async def test_deploy_rules_ads_status_tunnel_logs(world, container_runtime, tmp_path):
    me = world.providers[0].address
    async with provider_world(world, container_runtime, tmp_path / "p.sqlite") as (svc, phost, chost, ads, statuses):
        peer = phost.peer_id
        ad = await ads.wait_for(ad_from(svc, 1))
        assert ad.body["accepting"] and ad.body["gpus_total"] == 1 and ad.body["gpu_class"] == "cpu"
        assert ad.body["peer"] == peer.to_base58() and ad.body["addrs"]
        job = http_job(world)

        accepted: list[int] = []  # container id length when "accepted" came: none yet

        async def refused(frame, reason):
            reply = await pclient.send_deploy(chost, peer, frame, on_accepted=lambda: 1 / 0)
            assert reply["t"] == "refused" and reason in reply["reason"], reply

        no_qc = {"t": "deploy", "job_id": job, "round": 0, "provider": me, "sigs": []}
        await refused(no_qc, "no quorum certificate")
        await refused({"t": "deploy", "job_id": job}, "malformed")
        forged = qc_frame(world, job, me, [ident("stranger1"), ident("stranger2")])
        await refused(forged, "unknown signer")
        await refused(qc_frame(world, job, me, world.checkers[2:]), "stake below quorum")
        other = world.providers[1].address
        await refused(qc_frame(world, job, other, world.checkers[:2]), "names provider")
        await refused(qc_frame(world, 999, me, world.checkers[:2]), "does not exist on chain")
        assert await container_runtime.list_managed() == []

        # The chain records the certificate; the provider deploys it, once.
        world.assign(job, 0, me, world.checkers[:2])
        good = qc_frame(world, job, me, world.checkers[:2])
        def on_accepted():  # the checks passed; the container starts after this frame
            accepted.append(len(svc.state.get_job(job).container_id))

        first = await pclient.send_deploy(chost, peer, good, on_accepted=on_accepted)
        again = await pclient.send_deploy(chost, peer, good, on_accepted=on_accepted)
        assert first["t"] == again["t"] == "deployed" and first["qc_digest"] == again["qc_digest"]
        assert accepted == [0]  # the running deployment again: no second "accepted"
        assert first["container_port"] == DEMO_HTTP_PORT
        assert len(await container_runtime.list_managed()) == 1
        await ads.wait_for(ad_from(svc, 0))
        deployed = await statuses.wait_for(status_of(job, "deployed"))
        assert deployed.signer == me and deployed.body["qc_digest"] == first["qc_digest"]
        await statuses.wait_for(status_of(job, "running"))
        assert svc.busy_seconds() is not None  # every slot serves a job: PoPW answers busy

        # Tunnel: an HTTP request to the container and back, two at once.
        domain = world.kc.domain
        results = []

        async def get(i):
            results.append(await http_get(chost, peer, world.owner, domain, job, f"/cgi-bin/echo?q{i}"))

        async with trio.open_nursery() as n:
            n.start_soon(get, 1)
            n.start_soon(get, 2)
        assert all(b"200 OK" in r for r in results)
        assert {b"query=q1" in r or b"query=q2" in r for r in results} == {True}
        assert f"job={job}".encode() in results[0]

        # Refusals: another key, an expired token, a replayed nonce, another provider id.
        async def tunnel_refused(frame, reason, owner=world.owner):
            with pytest.raises(pclient.TunnelRefused, match=reason):
                async with pclient.open_tunnel(chost, peer, owner, domain, job, token_frame=frame):
                    pass

        stranger = ident("stranger")
        await tunnel_refused(msg.tunnel_token(stranger, domain, job, peer.to_base58()).to_frame(), "job owner")
        old = msg.tunnel_token(world.owner, domain, job, peer.to_base58(), expiry=int(time.time()) - 1)
        await tunnel_refused(old.to_frame(), "expired")
        token = msg.tunnel_token(world.owner, domain, job, peer.to_base58()).to_frame()
        async with pclient.open_tunnel(chost, peer, world.owner, domain, job, token_frame=token):
            pass
        await tunnel_refused(token, "replayed")
        elsewhere = msg.tunnel_token(world.owner, domain, job, chost.peer_id.to_base58()).to_frame()
        await tunnel_refused(elsewhere, "job owner")

        # Status query and logs: to the owner only.
        env, sigs = await pclient.query_status(chost, peer, world.owner, domain, job)
        assert env.signer == me and env.body["state"] == "running" and len(sigs) == 2
        with pytest.raises(pclient.ProviderRefused, match="job owner"):
            await pclient.query_status(chost, peer, stranger, domain, job)
        logs = b"".join([c async for c in pclient.stream_logs(chost, peer, world.owner, domain, job)])
        assert b"kaisar-demo-http listening" in logs, logs
        with pytest.raises(pclient.ProviderRefused, match="job owner"):
            async for _ in pclient.stream_logs(chost, peer, stranger, domain, job):
                pass

        # Per-job tunnel limit (2 here): a third concurrent tunnel is refused.
        async with pclient.open_tunnel(chost, peer, world.owner, domain, job):
            async with pclient.open_tunnel(chost, peer, world.owner, domain, job):
                with pytest.raises(pclient.TunnelRefused, match="at most 2 tunnels"):
                    async with pclient.open_tunnel(chost, peer, world.owner, domain, job):
                        pass
        await trio.sleep(0.2)  # the provider notices both closed

        # Owner closes the job on chain: container stops, a followed log stream and an
        # open tunnel end, capacity comes back, new tunnels are refused.
        followed: list[bytes] = []
        done = trio.Event()

        async def follow() -> None:
            async for chunk in pclient.stream_logs(chost, peer, world.owner, domain, job, follow=True):
                followed.append(chunk)
            done.set()

        async with trio.open_nursery() as n:
            n.start_soon(follow)
            async with pclient.open_tunnel(chost, peer, world.owner, domain, job) as idle:
                await world.kc.close_job(world.owner, job)
                await statuses.wait_for(status_of(job, "stopped"))
                assert await idle.read_all(timeout=10) == b""  # provider ended the pipe
            with trio.fail_after(10):
                await done.wait()
        assert b"kaisar-demo-http listening" in b"".join(followed)
        await ads.wait_for(ad_from(svc, 1))
        info = await container_runtime.status(job)
        assert info is not None and not info.running
        with pytest.raises(pclient.TunnelRefused, match="not running"):
            await http_get(chost, peer, world.owner, domain, job)


async def test_failed_start_is_reported_and_frees_capacity(world, container_runtime, tmp_path):
    me = world.providers[0].address
    async with provider_world(world, container_runtime, tmp_path / "p.sqlite") as (svc, phost, chost, ads, statuses):
        job = world.create_job(duration=600, image="kaisar/no-such-image:latest", port=8080, gpu=GPU)
        reply = await pclient.send_deploy(chost, phost.peer_id, qc_frame(world, job, me, world.checkers[:3]))
        assert reply["t"] == "failed" and "start failed" in reply["reason"]
        failed = await statuses.wait_for(status_of(job, "failed"))
        assert "start failed" in failed.body["reason"]
        await ads.wait_for(ad_from(svc, 1))
        assert await container_runtime.list_managed() == []


async def test_restart_readopts_running_container(world, container_runtime, tmp_path):
    me = world.providers[0].address
    state = tmp_path / "p.sqlite"
    job = http_job(world)
    async with provider_world(world, container_runtime, state) as (svc, phost, chost, ads, statuses):
        reply = await pclient.send_deploy(chost, phost.peer_id, qc_frame(world, job, me, world.checkers[:2]))
        assert reply["t"] == "deployed"
    first = await container_runtime.status(job)
    assert first is not None and first.running  # stopping the provider leaves the job running
    async with provider_world(world, container_runtime, state) as (svc, phost, chost, ads, statuses):
        rec = svc.state.get_job(job)
        assert rec.state == "running" and rec.container_id == first.container_id
        await ads.wait_for(ad_from(svc, 0))
        page = await http_get(chost, phost.peer_id, world.owner, world.kc.domain, job)
        assert b"query=hello" in page
        # the same certificate after the restart: still one container
        again = await pclient.send_deploy(chost, phost.peer_id, qc_frame(world, job, me, world.checkers[:2]))
        assert again["t"] == "deployed"
        assert [c.container_id for c in await container_runtime.list_managed()] == [first.container_id]
    # The job ended while the provider was down: the next start stops it and removes its container.
    st = ProviderState(state)
    st.update_job(job, expires=time.time() - 1)
    st.close()
    async with provider_world(world, container_runtime, state) as (svc, phost, chost, ads, statuses):
        assert svc.state.get_job(job).state == "stopped"
        assert await container_runtime.list_managed() == []
        await ads.wait_for(ad_from(svc, 1))


async def test_a_deploy_cut_off_after_accepting_is_finished_not_reported_deployed(
    world, container_runtime, tmp_path, monkeypatch
):
    """The checker's connection went away after "accepted" (its handler cancelled):
    the job stayed "deploying" with no container, and every later deploy of the same
    certificate was answered "deployed", so no checker failed it (a soak job was paid
    for 77 s and never served). The same certificate again finishes the deploy; a
    stalled one the monitor finishes by itself."""
    from node.roles.provider import service as psvc

    me = world.providers[0].address
    async with provider_world(world, container_runtime, tmp_path / "p.sqlite") as (svc, phost, chost, ads, statuses):
        for resume in ("same certificate", "monitor"):
            job = http_job(world)
            frame = qc_frame(world, job, me, world.checkers[:3])
            with trio.CancelScope() as cut:

                async def accepted(job_id, cut=cut):
                    cut.cancel()  # the stream dies right after the "accepted" frame

                await svc.deploy(frame, None, accepted=accepted)
            assert cut.cancelled_caught
            assert svc.state.get_job(job).state == "deploying"
            assert await container_runtime.status(job) is None
            if resume == "same certificate":
                reply = await svc.deploy(frame, None)
                assert reply["t"] == "deployed" and reply["state"] == "running"
            else:
                monkeypatch.setattr(psvc, "DEPLOY_STALL_S", 0.0)
                await svc.check_jobs()
            assert svc.state.get_job(job).state == "running"
            await statuses.wait_for(status_of(job, "deployed"))
            page = await http_get(chost, phost.peer_id, world.owner, world.kc.domain, job)
            assert b"query=hello" in page
            await svc.end_job(job, msg.STOPPED, "test done")
