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
    with pytest.raises(ValueError, match="no accepting provider"):
        check_fit([offer(accepting=False)], "cpu", 1, None)
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
