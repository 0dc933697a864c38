"""Owner-only streams (status, logs, tunnel): token rules per action, replay, expiry,
per-job limits. Handlers run through their entry points on in-memory streams; the logs
limit uses real containers on the real Docker Engine."""

from __future__ import annotations

import time

import pytest
import trio

from node.devnet import DEVNET_DOMAIN
from node.identity import Identity
from node.p2p.frames import FrameError, memory_pair
from node.p2p.host import HostOptions, KaisarHost
from node.popw.inventory import Inventory
from node.roles.provider import messages as msg
from node.roles.provider.images import BUSYBOX_IMAGE
from node.roles.provider.service import ProviderService, ProviderSettings
from node.roles.provider.state import JobRecord

pytest_plugins = ["chain_fixtures"]
OWNER = Identity.generate()
JOB = 5


def make_service(tmp_path, runtime=None, chain=None, prover=None, **settings) -> ProviderService:
    host = KaisarHost(Identity.generate(), network="devnet", domain=DEVNET_DOMAIN, options=HostOptions(dht=False))
    svc = ProviderService(host, ProviderSettings(**settings), tmp_path / "p.sqlite", chain=chain,
                          inventory=Inventory(cpu="t", cpu_count=1), runtime=runtime, prover=prover)  # fmt: skip
    now = time.time()
    svc.state.put_job(
        JobRecord(job_id=JOB, round=0, qc_digest=b"\x01" * 32, qc_sigs=(), owner=OWNER.address,
                  image=BUSYBOX_IMAGE, port=8080, gpus=(), state=msg.RUNNING, reason="",
                  container_id="", host_port=None, started=now, expires=now + 3600)
    )  # fmt: skip
    return svc


async def ask(handler, frame) -> dict:
    peer_end, node_end = memory_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handler, node_end, "peer")
        await peer_end.send(frame)
        with trio.fail_after(10):
            reply = await peer_end.recv()
        await peer_end.close()
        nursery.cancel_scope.cancel()
    return reply


@pytest.mark.parametrize("action", [msg.ACTION_STATUS, msg.ACTION_LOGS, msg.ACTION_TUNNEL])
async def test_owner_token_rules_on_every_owner_stream(tmp_path, action):
    svc = make_service(tmp_path)
    handler = {msg.ACTION_STATUS: svc._on_status, msg.ACTION_LOGS: svc._on_logs, msg.ACTION_TUNNEL: svc._on_tunnel}[action]
    other = next(a for a in sorted(msg.ACTIONS) if a != action)
    now = int(time.time())

    def tok(who=OWNER, act=action, job=JOB, peer=None, expiry=None):
        return msg.owner_token(who, svc.domain, act, job, peer or svc.peer, expiry=expiry).to_frame()

    refusals = {
        "job owner": tok(who=Identity.generate()),  # another key
        "malformed": tok(act=other),  # a token for another action
        "not deployed": tok(job=JOB + 1),  # another job
        "expired": tok(expiry=now - 1),
        "longer than": tok(expiry=now + msg.MAX_TOKEN_LIFETIME_S + 60),
    }
    elsewhere = tok(peer="16Uiu2HAmSomeOtherProvider")  # signed for another provider
    for reason, frame in [*refusals.items(), ("job owner", elsewhere)]:
        reply = await ask(handler, frame)
        assert reply["ok"] is False and reason in reply["reason"], (reason, reply)
    good = tok()
    first = await ask(handler, good)
    # the owner's token is accepted once (status answers; logs/tunnel need an engine or a port)
    assert first["ok"] is True or "not running" in first["reason"] or "engine" in first["reason"]
    again = await ask(handler, good)
    assert again["ok"] is False and "replayed" in again["reason"]


@pytest.mark.docker
async def test_log_streams_per_job_are_limited(tmp_path, container_runtime):
    await container_runtime.start(JOB, BUSYBOX_IMAGE, 8080, command=["sh", "-c", "while true; do echo tick; sleep 1; done"])
    svc = make_service(tmp_path, runtime=container_runtime, max_log_streams_per_job=2)

    async def follow(task_status=trio.TASK_STATUS_IGNORED):
        peer_end, node_end = memory_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(svc._on_logs, node_end, "peer")
            token = msg.owner_token(OWNER, svc.domain, msg.ACTION_LOGS, JOB, svc.peer).to_frame()
            await peer_end.send({**token, "follow": True})
            reply = await peer_end.recv()
            task_status.started(reply)
            if reply["ok"]:
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        assert (await nursery.start(follow))["ok"] is True
        held = trio.CancelScope()

        async def second(task_status=trio.TASK_STATUS_IGNORED):
            with held:
                await follow(task_status=task_status)

        assert (await nursery.start(second))["ok"] is True
        third = await nursery.start(follow)
        assert third["ok"] is False and "at most 2 log streams" in third["reason"]
        held.cancel()  # one follower leaves: its slot comes back
        with trio.fail_after(10):
            while svc._log_streams.get(JOB, 0) > 1:
                await trio.sleep(0.05)
        assert (await nursery.start(follow))["ok"] is True
        nursery.cancel_scope.cancel()


async def test_popw_is_answered_for_active_checkers_only(tmp_path, world):
    """Anyone else could use a provider as a free prover (relaying its own PoPW challenge
    to an honest GPU) or just burn its GPU time: the provider computes for checkers only."""
    from node.popw.challenge import new_challenge
    from node.popw.protocol import encode_challenge
    from node.popw.prover import Prover

    svc = make_service(tmp_path, chain=world.kc, prover=Prover())
    svc.slots = ["cpu0", "cpu1"]  # one free slot: PoPW is answered when allowed

    async def challenge_from(identity) -> object:
        peer_end, node_end = memory_pair()

        async def node():
            try:
                await svc._on_popw(node_end, identity.peer_id)
            except FrameError:  # we hang up after the first answer (the host logs this)
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(node)
            try:
                await peer_end.send(encode_challenge(new_challenge(16, 1, 5.0)))
                reply = await peer_end.recv(timeout=10)
            except FrameError:
                reply = None  # no answer: the provider dropped the stream
            await peer_end.close()
            nursery.cancel_scope.cancel()
        return reply

    assert await challenge_from(world.outsider) is None
    assert await challenge_from(world.providers[1]) is None
    reply = await challenge_from(world.checkers[0])
    assert isinstance(reply, dict) and reply["t"] in ("commit", "busy"), reply
