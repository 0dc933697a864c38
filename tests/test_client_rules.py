"""Light client rules over real libp2p and the embedded chain, with scripted providers.

A scripted provider is a host holding a provider key that gossips ads and answers
``/kaisar/status/1`` with whatever the test wants: honest, a forged certificate, a
status signed by another key. No container engine needed.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest

pytest.register_assert_rewrite("chain_fixtures")
import trio  # noqa: E402
from chain_fixtures import GPU, ident  # noqa: E402

from node import wire  # noqa: E402
from node.client import NoProviderFits, VerificationFailed, WaitTimeout  # noqa: E402
from node.client.api import Client  # noqa: E402
from node.client.offers import Offer, check_fit, price_per_second  # noqa: E402
from node.consensus import votes  # noqa: E402
from node.devnet import start_network  # noqa: E402
from node.roles.provider import messages as msg  # noqa: E402
from node.roles.provider.service import STATUS_PROTOCOL  # noqa: E402

pytest_plugins = ["chain_fixtures"]

PRICE = 36 * 10**14  # wei per GPU-hour -> 10**12 wei/s per GPU


def offer(cls="cpu", free=1, price=PRICE, accepting=True, provider="0xP") -> Offer:
    return Offer(provider, "peer", (), cls, price, 2, free, accepting, 1e12)


def test_check_fit_names_what_is_missing():
    offers = [offer(free=1, price=PRICE), offer(free=2, price=2 * PRICE, provider="0xQ")]
    with pytest.raises(ValueError, match="no provider of class 'a100'.*heard: cpu"):
        check_fit(offers, "a100", 1, None)
    with pytest.raises(ValueError, match="not enough free GPUs: 3 wanted, at most 2 free"):
        check_fit(offers, "cpu", 3, None)
    with pytest.raises(ValueError, match=f"price above max.*asks {2 * PRICE}"):
        check_fit(offers, "cpu", 2, PRICE)
    with pytest.raises(ValueError, match=r"1 provider\(s\) heard, none accepting"):
        check_fit([offer(accepting=False)], "cpu", 1, None)
    with pytest.raises(ValueError, match="no provider ad heard at all"):
        check_fit([], "cpu", 1, None)
    assert [o.provider for o in check_fit(offers, "cpu", 1, None)] == ["0xP", "0xQ"]
    assert [o.provider for o in check_fit(offers, "cpu", 1, PRICE)] == ["0xP"]


def test_price_per_second_never_pays_less_than_the_ad():
    for hourly, count in [(1, 1), (3599, 1), (3601, 3), (PRICE, 2), (10**15 + 7, 5)]:
        pps = price_per_second(hourly, count)
        assert pps * 3600 // count >= hourly
        assert (pps - 1) * 3600 < hourly * count


class Scripted:
    """A provider host whose answers the test chooses."""

    def __init__(self, host, key) -> None:
        self.host, self.key = host, key
        self.reply: dict | None = None

    async def advertise(self, cls="cpu", free=1, price=PRICE) -> None:
        env = self.host.sign(
            "ProviderAd",
            {
                "peer": self.host.peer_id.to_base58(),
                "addrs": self.host.addrs()[:1],
                "gpu_class": cls,
                "price_per_gpu_hour_wei": price,
                "gpus_total": 2,
                "gpus_free": free,
                "accepting": True,
                "inventory": {"gpus": []},
            },
            ttl_ms=30_000,
        )
        await self.host.publish(msg.AD_TOPIC, env)

    def status(self, signer, job_id, round_, digest, state="running") -> wire.Envelope:
        fields = {
            "job_id": job_id,
            "round": round_,
            "state": state,
            "reason": "",
            "qc_digest": digest,
            "peer": self.host.peer_id.to_base58(),
            "container_port": 8080,
            "image": "img",
            "started": 1,
            "expires": 2**40,
        }
        return wire.sign(
            signer,
            self.host.domain,
            "JobStatus",
            fields,
            network=self.host.network,
            seq=self.host.next_seq(),
            ttl_ms=60_000,
        )

    async def on_status(self, framed, peer) -> None:
        await framed.recv(max_size=1024)
        await framed.send(self.reply or {"ok": False, "reason": "not deployed here"})


@asynccontextmanager
async def scripted_world(world, **client_kw):
    async with start_network(2, identities=[world.providers[0], world.owner]) as (phost, chost):
        fake = Scripted(phost, world.providers[0])
        phost.set_handler(STATUS_PROTOCOL, fake.on_status)
        client = Client(
            world.owner, chost, world.kc, **{"ad_wait": 2.0, "poll_interval": 0.2, **client_kw}
        )
        await client.start()
        await phost.subscribe(msg.AD_TOPIC, _ignore)
        yield fake, client


async def _ignore(env, peer) -> None:
    pass


async def advertise_until_heard(fake: Scripted, client: Client, **ad) -> None:
    with trio.fail_after(15):
        while client.offers.get(fake.key.address) is None:
            await fake.advertise(**ad)
            await trio.sleep(0.3)


async def test_buy_refused_before_payment_then_paid_when_an_offer_fits(world):
    owner = world.owner.address
    async with scripted_world(world) as (fake, client):
        await advertise_until_heard(fake, client, free=1, price=PRICE)
        before = world.h.balance(owner)
        with pytest.raises(NoProviderFits, match="no provider of class 'a100'.*nothing was paid"):
            await client.buy("a100", 1, "img", 8080, hours=1)
        with pytest.raises(NoProviderFits, match="not enough free GPUs"):
            await client.buy("cpu", 2, "img", 8080, hours=1)
        with pytest.raises(NoProviderFits, match="price above max"):
            await client.buy("cpu", 1, "img", 8080, hours=1, max_price=PRICE - 1)
        assert world.h.balance(owner) == before  # nothing paid, not even gas
        assert await client.ls() == []

        job_id = await client.buy("cpu", 1, "img", 8080, hours=0.5, max_price=PRICE)
        job = await world.kc.get_job(job_id)
        assert (job.owner, job.image, job.port, job.count, job.gpu_class) == (
            owner,
            "img",
            8080,
            1,
            GPU,
        )
        assert (
            job.duration == 1800 and job.price == PRICE // 3600 and job.deposit == 1800 * job.price
        )
        assert [v.job_id for v in await client.ls()] == [job_id]
        assert world.h.balance(owner) < before - job.deposit  # paid the deposit plus gas


async def test_wait_verifies_qc_and_provider_signature(world):
    provider = world.providers[0].address
    async with scripted_world(world) as (fake, client):
        await advertise_until_heard(fake, client)
        job = world.create_job(duration=600)
        lines: list[str] = []
        with pytest.raises(WaitTimeout, match="still waiting for the on-chain assignment"):
            await client.wait_deployed(job, timeout=0.5, progress=lines.append)
        assert lines == ["waiting for assignment"]

        world.assign(job, 0, provider, world.checkers[:2])  # 4 + 3 of 10 stake
        digest = votes.assign_digest(world.kc.domain, job, 0, provider)
        # another valid QC than the chain's: 4 + 2 + 1 of 10
        good = world.assign_sigs(job, 0, provider, [world.checkers[i] for i in (0, 2, 3)])
        with pytest.raises(WaitTimeout, match="provider's signed status"):
            await client.wait_deployed(job, timeout=0.8)

        async def rejected(reply, reason):
            fake.reply = reply
            with pytest.raises(VerificationFailed, match=reason):
                await client.wait_deployed(job, timeout=5)

        honest = fake.status(world.providers[0], job, 0, digest).to_bytes()
        # a certificate signed by strangers, and one below 2/3 of the stake
        strangers = world.assign_sigs(job, 0, provider, [ident("s1"), ident("s2"), ident("s3")])
        await rejected({"ok": True, "status": honest, "qc_sigs": strangers}, "unknown signer")
        weak = world.assign_sigs(job, 0, provider, world.checkers[2:])
        await rejected({"ok": True, "status": honest, "qc_sigs": weak}, "stake below quorum")
        twice = [good[0], good[0], good[1]]
        await rejected({"ok": True, "status": honest, "qc_sigs": twice}, "duplicate signer")
        # a status signed by another key, and one naming another assignment
        foreign = fake.status(world.providers[1], job, 0, digest).to_bytes()
        await rejected(
            {"ok": True, "status": foreign, "qc_sigs": good}, "not by the assigned provider"
        )
        other = votes.assign_digest(world.kc.domain, job, 1, provider)
        wrong = fake.status(world.providers[0], job, 0, other).to_bytes()
        await rejected({"ok": True, "status": wrong, "qc_sigs": good}, "qc_digest differs")

        fake.reply = {"ok": True, "status": honest, "qc_sigs": good}
        lines = []
        dep = await client.wait_deployed(job, timeout=5, progress=lines.append)
        assert lines == [f"assigned to {provider} round 0", "waiting for provider", "deployed"]
        assert dep.provider == provider and dep.peer == fake.host.peer_id.to_base58()
        assert dep.qc_digest == digest and dep.state == "running"
        assert 3 * dep.signed_stake >= 2 * dep.total_stake


async def test_wait_takes_the_providers_push_only_from_the_provider_itself(world, monkeypatch):
    """The provider pushes its signed status and QC copy to the waiting owner
    (/kaisar/notify/1): wait returns without gossip or a second status query. A push
    of that same genuine status from another peer, paired with a forged QC, is
    ignored (taken, it would fail the wait with VerificationFailed). Pushes for jobs
    nobody waits for are not kept; other peers' own statuses are kept only up to a cap,
    which never crowds out the assigned provider's."""
    import node.client.api as api

    monkeypatch.setattr(api, "MAX_PUSHERS_PER_JOB", 1)
    provider = world.providers[0].address
    idents = [world.providers[0], world.owner, ident("pusher"), ident("pusher2")]
    async with start_network(4, identities=idents) as (phost, chost, other, other2):
        fake = Scripted(phost, world.providers[0])
        queries = []

        async def on_status(framed, peer) -> None:
            queries.append(peer)
            await fake.on_status(framed, peer)

        phost.set_handler(STATUS_PROTOCOL, on_status)
        # a long poll: after its first status query the client only learns by push
        client = Client(world.owner, chost, world.kc, ad_wait=2.0, poll_interval=60.0)
        await client.start()
        job = world.create_job(duration=600)
        world.assign(job, 0, provider, world.checkers[:2])
        digest = votes.assign_digest(world.kc.domain, job, 0, provider)
        good = world.assign_sigs(job, 0, provider, world.checkers[:2])
        honest = fake.status(world.providers[0], job, 0, digest).to_bytes()

        async def push(host, sigs) -> None:
            frame = {"t": "status", "status": honest, "qc_sigs": sigs}
            async with host.open_stream(chost.peer_id, msg.NOTIFY_PROTOCOL) as framed:
                await framed.send(frame)

        await push(phost, good)  # nobody waits for the job yet
        await trio.sleep(0.2)
        assert client._pushed == {}

        lines: list[str] = []
        got = []
        async with trio.open_nursery() as n:

            async def wait() -> None:
                got.append(await client.wait_deployed(job, timeout=20, progress=lines.append))

            n.start_soon(wait)
            with trio.fail_after(10):
                while "waiting for provider" not in lines or not queries:
                    await trio.sleep(0.02)
            forged = world.assign_sigs(job, 0, provider, [ident("s1"), ident("s2")])
            await push(other, forged)
            await trio.sleep(0.3)
            assert not got and client._pushed == {}
            for host, key in ((other, ident("pusher")), (other2, ident("pusher2"))):
                own = fake.status(key, job, 0, digest).to_bytes()  # its own status
                await chost.connect(host.addrs()[0])
                async with host.open_stream(chost.peer_id, msg.NOTIFY_PROTOCOL) as framed:
                    await framed.send({"t": "status", "status": own, "qc_sigs": forged})
            await trio.sleep(0.3)
            assert list(client._pushed) == [(job, ident("pusher").address)]  # the cap is full
            await push(phost, good)
        dep = got[0]
        assert dep.provider == provider and dep.qc_digest == digest and len(dep.qc_signers) == 2
        assert len(queries) == 1 and client._pushed == {}


async def test_wait_asks_the_provider_at_most_once_per_poll_interval(world):
    """Every gossip message wakes a waiting client; a status query goes out at most
    once per poll interval however many wake it (a query per wake kept the provider
    signing answers while its container started)."""
    provider = world.providers[0].address
    async with scripted_world(world, poll_interval=0.5) as (fake, client):
        queries = []

        async def on_status(framed, peer) -> None:
            queries.append(trio.current_time())
            await fake.on_status(framed, peer)  # "not deployed here"

        fake.host.set_handler(STATUS_PROTOCOL, on_status)
        job = world.create_job(duration=600)
        world.assign(job, 0, provider, world.checkers[:2])
        async with trio.open_nursery() as n:

            async def chatter() -> None:
                while True:  # ads wake the client every 50 ms
                    await fake.advertise()
                    await trio.sleep(0.05)

            n.start_soon(chatter)
            t0 = trio.current_time()
            with pytest.raises(WaitTimeout, match="provider's signed status"):
                await client.wait_deployed(job, timeout=1.6)
            n.cancel_scope.cancel()
        assert 2 <= len(queries) <= (trio.current_time() - t0) / 0.5 + 1


async def test_chain_qc_finds_an_assignment_older_than_the_recent_window(world, monkeypatch):
    """chain_qc reads the newest blocks first; an assignment further back is still found.
    A fresh assignment costs one small log read (eth-tester's eth_getLogs grew faster
    than its span: a 64-block first window cost a waiting client ~0.2 s of CPU)."""
    from node.client.api import QC_SCAN_FIRST

    provider = world.providers[0].address
    async with scripted_world(world) as (fake, client):
        old = world.create_job(duration=600)
        world.assign(old, 0, provider, world.checkers[:2])
        world.chain.mine(5 * QC_SCAN_FIRST + 3)  # a few doubling ranges back
        recent = world.create_job(duration=600)
        other = [world.checkers[i] for i in (0, 2, 3)]  # 4 + 2 + 1 of 10
        world.assign(recent, 0, provider, other)
        spans: list[tuple[int, int]] = []
        real = client._assign_logs

        def spying(lo, hi, job_id):
            spans.append((lo, hi))
            return real(lo, hi, job_id)

        monkeypatch.setattr(client, "_assign_logs", spying)
        for job, signers in ((old, world.checkers[:2]), (recent, other)):
            spans.clear()
            want = world.assign_sigs(job, 0, provider, signers)
            assert await client.chain_qc(await world.kc.get_job(job)) == want
            if job == recent:
                assert len(spans) == 1 and spans[0][1] - spans[0][0] + 1 == QC_SCAN_FIRST
            else:  # read back to front, without gaps or overlaps
                assert len(spans) > 2
                assert all(a[0] == b[1] + 1 for a, b in zip(spans, spans[1:], strict=False))


async def test_connect_right_after_wait_reuses_the_verification(world, monkeypatch):
    """connect within the route's recheck time of wait's verification listens on that
    verification (no chain read: a route is that old between two connections anyway);
    a later connect verifies again."""
    provider = world.providers[0].address
    async with scripted_world(world) as (fake, client):
        job = world.create_job(duration=600)
        world.assign(job, 0, provider, world.checkers[:2])
        digest = votes.assign_digest(world.kc.domain, job, 0, provider)
        good = world.assign_sigs(job, 0, provider, world.checkers[:2])
        honest = fake.status(world.providers[0], job, 0, digest).to_bytes()
        fake.reply = {"ok": True, "status": honest, "qc_sigs": good}
        dep = await client.wait_deployed(job, timeout=10)
        reads = []
        real = client.chain.get_job

        async def counting(job_id):
            reads.append(job_id)
            return await real(job_id)

        monkeypatch.setattr(client.chain, "get_job", counting)
        async with trio.open_nursery() as n:
            await n.start(client.connect, job, 0)
            assert reads == []
            n.cancel_scope.cancel()
        client._verified[job] = (dep, 2**62, trio.current_time() - 5.0)  # older than recheck
        async with trio.open_nursery() as n:
            await n.start(client.connect, job, 0)
            assert reads and set(reads) == {job}
            n.cancel_scope.cancel()


async def test_a_hanging_status_query_does_not_hold_up_the_push(world):
    """Status queries run beside the wait: while the provider sits on a query, its push
    (or gossip) is looked at at once (the wait used to block in the query, up to 10 s)."""
    provider = world.providers[0].address
    async with scripted_world(world, poll_interval=0.2) as (fake, client):
        asked = trio.Event()

        async def hang(framed, peer) -> None:
            asked.set()
            await trio.sleep(30)

        fake.host.set_handler(STATUS_PROTOCOL, hang)
        job = world.create_job(duration=600)
        world.assign(job, 0, provider, world.checkers[:2])
        digest = votes.assign_digest(world.kc.domain, job, 0, provider)
        good = world.assign_sigs(job, 0, provider, world.checkers[:2])
        frame = {"t": "status", "status": fake.status(world.providers[0], job, 0, digest).to_bytes(),
                 "qc_sigs": good}  # fmt: skip
        got = []
        async with trio.open_nursery() as n:

            async def wait() -> None:
                got.append(await client.wait_deployed(job, timeout=5))

            n.start_soon(wait)
            with trio.fail_after(5):
                await asked.wait()
            async with fake.host.open_stream(client.host.peer_id, msg.NOTIFY_PROTOCOL) as framed:
                await framed.send(frame)
        assert got[0].qc_digest == digest and client.last_status_source == "push"
