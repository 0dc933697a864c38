"""4 checkers as real libp2p nodes assign 10 jobs on the embedded chain; one is killed midway."""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager

import trio
from eth_utils import keccak
from test_checker_helpers import FAST, FAST_CLASSES, HonestProvider

from node.chain.api import JOB_ASSIGNED, JOB_OPEN, KaisarChain
from node.chain.genesis import GenesisChecker, start_embedded
from node.chain.watcher import EventWatcher
from node.consensus import votes
from node.devnet import start_network, wait_for_mesh
from node.identity import Identity
from node.roles.checker.service import CheckerService

ETHER = 10**18


def ident(label: str) -> Identity:
    return Identity(keccak(label.encode()))


@asynccontextmanager
async def checker_beside_a_provider(kc, checker, provider, tmp_path):
    """One checker service (PoPW off: only the chain can tell standing) and one provider
    publishing honest ads, on two hosts; yields the service; all of it is cancelled on exit."""
    settings = dataclasses.replace(FAST, popw=False)
    async with start_network(2, identities=[checker, provider], domain=kc.domain) as hosts:
        async with trio.open_nursery() as nursery:
            await nursery.start(HonestProvider(hosts[1], kc).run)
            svc = CheckerService(hosts[0], hosts[0].identity, kc, tmp_path / "c", settings, classes=FAST_CLASSES)
            await nursery.start(svc.run)
            yield svc
            nursery.cancel_scope.cancel()


async def test_four_checkers_assign_ten_jobs_with_one_killed(tmp_path):
    checkers = [ident(f"net-checker{i}") for i in range(4)]
    providers = [ident(f"net-provider{i}") for i in range(2)]
    owner = ident("net-owner")
    dev = await start_embedded([GenesisChecker(c, c, ETHER) for c in checkers])
    kc = dev.chain
    await dev.fund(owner.address)
    async with start_network(6, identities=[*checkers, *providers], domain=kc.domain) as hosts:
        async with trio.open_nursery() as nursery:
            honest = [HonestProvider(h, kc) for h in hosts[4:]]
            for p in honest:  # providers bootstrap to the checkers
                for c in hosts[:4]:
                    await p.host.connect(c.addrs()[0])
                await nursery.start(p.run)
            scopes, services = [], []
            for i, h in enumerate(hosts[:4]):
                scope = trio.CancelScope()
                svc = CheckerService(h, h.identity, kc, tmp_path / f"c{i}", FAST, classes=FAST_CLASSES)

                async def run(task_status, svc=svc, scope=scope):
                    with scope:
                        await svc.run(task_status=task_status)

                await nursery.start(run)
                scopes.append(scope)
                services.append(svc)
            await wait_for_mesh(hosts[:4], "assign/1")
            # PoPW first: every provider gets a PASS certificate from its committee
            with trio.fail_after(30):
                while not all(len(s.standing) == 2 for s in services):
                    await trio.sleep(0.1)

            jobs = []
            for i in range(10):
                jobs.append(
                    await kc.create_job(
                        owner, spec_hash=b"\x01" * 32, gpu_class=votes.gpu_class_id("cpu"), count=1,
                        image="busybox", port=8080, duration=600, price_per_second=10**9,
                    )
                )  # fmt: skip
                if i == 4:
                    scopes[1].cancel()  # a checker dies midway (1 of 4 = f)
            with trio.fail_after(45):
                while True:
                    states = [(await kc.get_job(j)).state for j in jobs]
                    if all(s == JOB_ASSIGNED for s in states):
                        break
                    await trio.sleep(0.2)
            # exactly one assignment per job on chain, and its provider got the deploy
            watcher = EventWatcher(kc.client, [kc.escrow], from_block=kc.deployment.block)
            assigned = [e.args["job_id"] for e in await watcher.poll() if e.name == "JobAssigned"]
            assert sorted(assigned) == sorted(jobs)
            with trio.fail_after(10):  # every job's provider got a valid deploy command
                while sorted(j for p in honest for j in p.deployed) != sorted(jobs):
                    await trio.sleep(0.1)
            for j in jobs:
                job = await kc.get_job(j)
                mine = next(p for p in honest if p.host.address == job.provider)
                assert mine.deployed[j]["round"] == job.round
            nursery.cancel_scope.cancel()


async def test_deploy_goes_out_while_the_assignment_is_mined(tmp_path):
    """The deploy command does not wait for Escrow.assign: with every checker's chain
    sender held (no assignment can be mined), the provider still gets a valid deploy
    for the job, which it accepts because the job is open on chain in that round.
    A refused deploy still becomes a certified failure: the leader reports it once its
    assignment is on chain (the contract takes failure votes only for an assignment).
    A freshly created job starts from its JobCreated event: no checker reads the job
    from chain before its engine has started it; and its fresh JobAssigned event is
    taken as it is: no checker's event handler reads the job at all (four reads there
    held the chain just when the provider reads it before its deploy). The leader's
    assign goes out at the provider's first answer, not while the deploy is delivered."""
    import dataclasses
    import sys
    from contextlib import AsyncExitStack

    # no missed-heartbeat failures: a failure can only come from the refused deploy
    settings = dataclasses.replace(FAST, status_timeout=3600.0)
    checkers = [ident(f"par-checker{i}") for i in range(4)]
    provider, owner = ident("par-provider"), ident("par-owner")
    dev = await start_embedded([GenesisChecker(c, c, ETHER) for c in checkers])
    kc = dev.chain
    await dev.fund(owner.address)
    async with start_network(5, identities=[*checkers, provider], domain=kc.domain) as hosts:
        async with trio.open_nursery() as nursery:
            honest = HonestProvider(hosts[4], kc)
            for c in hosts[:4]:
                await honest.host.connect(c.addrs()[0])
            await nursery.start(honest.run)
            services = []
            reads: list[tuple[int, bool, str]] = []  # (job, its engine had started it, caller)

            def counted(svc_of) -> KaisarChain:
                view = KaisarChain(kc.client, kc.deployment)
                real = view.get_job

                async def get_job(job_id: int):
                    caller = sys._getframe(1).f_code.co_name
                    reads.append((job_id, job_id in svc_of().engine.jobs, caller))
                    return await real(job_id)

                view.get_job = get_job  # type: ignore[method-assign]
                return view

            for i, h in enumerate(hosts[:4]):
                svc = CheckerService(
                    h, h.identity, counted(lambda i=i: services[i]), tmp_path / f"c{i}",
                    settings, classes=FAST_CLASSES,
                )  # fmt: skip
                await nursery.start(svc.run)
                services.append(svc)
            await wait_for_mesh(hosts[:4], "assign/1")
            with trio.fail_after(60):
                while not all(s.standing for s in services):
                    await trio.sleep(0.1)
            async with AsyncExitStack() as held:
                for c in checkers:  # no checker transaction can go out now
                    await held.enter_async_context(kc.client.sender(c)._lock)
                job_id = await kc.create_job(
                    owner, spec_hash=b"\x01" * 32, gpu_class=votes.gpu_class_id("cpu"), count=1,
                    image="busybox", port=8080, duration=600, price_per_second=10**9,
                )  # fmt: skip
                with trio.fail_after(60):
                    while job_id not in honest.deployed:
                        await trio.sleep(0.05)
                assert honest.deployed[job_id]["chain_state"] == JOB_OPEN
                assert (await kc.get_job(job_id)).state == JOB_OPEN
                assert not [r for r in reads if r[:2] == (job_id, False)]
            with trio.fail_after(60):  # released: the assignment lands as well
                while (await kc.get_job(job_id)).state != JOB_ASSIGNED:
                    await trio.sleep(0.1)
            with trio.fail_after(30):  # every checker handled JobAssigned (engine settled it)
                while any(job_id not in s.engine._settled for s in services):
                    await trio.sleep(0.05)
            a = [s.assigned[job_id] for s in services]
            assert {(x.provider, x.round, x.count) for x in a} == {(provider.address, 0, 1)}
            assert not [r for r in reads if r[0] == job_id and r[2] == "_on_event"], reads
            # the leader's Escrow.assign waits for the provider's first answer (here its
            # reply, slow to come): mined meanwhile, it held up the deploy's delivery
            honest.answer_delay = 0.6
            slow = await kc.create_job(
                owner, spec_hash=b"\x03" * 32, gpu_class=votes.gpu_class_id("cpu"), count=1,
                image="busybox", port=8080, duration=600, price_per_second=10**9,
            )  # fmt: skip
            with trio.fail_after(60):
                while "state_at_answer" not in honest.deployed.get(slow, {}):
                    await trio.sleep(0.05)
            assert honest.deployed[slow]["state_at_answer"] == JOB_OPEN
            with trio.fail_after(60):
                while (await kc.get_job(slow)).state != JOB_ASSIGNED:
                    await trio.sleep(0.1)
            honest.answer_delay = 0.0
            honest.refuse = "test: refusing every deploy"
            refused = await kc.create_job(
                owner, spec_hash=b"\x02" * 32, gpu_class=votes.gpu_class_id("cpu"), count=1,
                image="busybox", port=8080, duration=600, price_per_second=10**9,
            )  # fmt: skip
            with trio.fail_after(60):
                while (await kc.get_job(refused)).failures < 1:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()


async def test_a_restarted_checker_takes_popw_standing_from_the_chain(tmp_path):
    """PoPW standing lives in memory; a checker that (re)starts mid-epoch heard none of
    the epoch's PoPW gossip. It takes standing from Rewards' Certified events instead,
    so it can prevote a proposal at once (in the churn soak, a restarted checker found
    no provider eligible for up to a minute; with one more checker down, 4 checkers
    had no quorum and jobs were never assigned)."""

    from node.consensus.checkers import make_checker_set
    from node.consensus.qc import build_popw_qc, sign_popw_vote
    from node.consensus.scheduler import has_popw_standing
    from node.roles.checker.service import job_spec

    checkers = [ident(f"std-checker{i}") for i in range(4)]
    provider = ident("std-provider")
    dev = await start_embedded([GenesisChecker(c, c, ETHER) for c in checkers])
    kc = dev.chain
    cset = make_checker_set((c.address, ETHER) for c in checkers)
    cls = votes.gpu_class_id("cpu")
    signed = [sign_popw_vote(c, kc.domain, 0, provider.address, votes.VERDICT_PASS, cls) for c in checkers[:3]]
    qc = build_popw_qc(kc.domain, cset, signed, 0)
    assert qc is not None
    await kc.submit_popw(checkers[0], 0, provider.address, cls, qc.signatures)  # Certified
    async with checker_beside_a_provider(kc, checkers[3], provider, tmp_path) as svc:
        with trio.fail_after(10):
            while provider.address not in svc.standing or provider.address not in svc.ads:
                await trio.sleep(0.05)
        assert svc.standing[provider.address] == 0 == svc.epoch()
        owner = ident("std-owner")
        await dev.fund(owner.address)
        job = await kc.create_job(
            owner, spec_hash=b"\x01" * 32, gpu_class=cls, count=1, image="busybox", port=8080,
            duration=600, price_per_second=10**9,
        )  # fmt: skip
        view, epoch = svc.view(job_spec(await kc.get_job(job)))
        assert [p.address for p in view if has_popw_standing(p, epoch)] == [provider.address]


async def test_no_failure_vote_after_paid_time_and_explain_names_the_miss(tmp_path):
    """A checker's view explained (docs/CHECKER.md, "Why a round found no provider"): a
    fresh ad without PoPW standing is no_standing, an expired one stale_ad. And a checker
    signs no FailureVote once the assignment's paid time is over (the job ran its
    course; Escrow.fail refuses it then), but does while it runs."""

    from node.roles.checker.service import job_spec

    checkers = [ident(f"late-checker{i}") for i in range(4)]
    provider = ident("late-provider")
    dev = await start_embedded([GenesisChecker(c, c, ETHER) for c in checkers])
    kc = dev.chain
    async with checker_beside_a_provider(kc, checkers[3], provider, tmp_path) as svc:
        with trio.fail_after(30):  # the first ad crosses the mesh once it forms (slow under load)
            while provider.address not in svc.ads:
                await trio.sleep(0.05)
        owner = ident("late-owner")
        await dev.fund(owner.address)
        job = await kc.create_job(
            owner, spec_hash=b"\x01" * 32, gpu_class=votes.gpu_class_id("cpu"), count=1,
            image="busybox", port=8080, duration=600, price_per_second=10**9,
        )  # fmt: skip
        spec = job_spec(await kc.get_job(job))
        assert svc.explain(spec) == ("no_standing", {provider.address: "no_standing"})
        svc.standing[provider.address] = svc.epoch()
        assert svc.explain(spec)[0] == "eligible"
        real = svc.clock
        svc.clock = lambda: real() + 3600  # past the ad's expiry and the job's end
        assert svc.explain(spec) == ("stale_ad", {provider.address: "stale_ad"})
        digest = votes.assign_digest(kc.domain, job, 0, provider.address)
        await kc.assign(checkers[0], job, 0, provider.address, [votes.sign(c, digest) for c in checkers[:3]])
        await svc._suspect(job, 0, provider.address, "missed heartbeats")
        assert (job, 0) not in svc._signed_failure  # after the end: no vote
        svc.clock = real
        await svc._suspect(job, 0, provider.address, "missed heartbeats")
        assert (job, 0) in svc._signed_failure  # while it runs: the vote is signed


async def test_an_assignment_never_deployed_is_suspected_after_deploy_timeout(tmp_path):
    """A provider that accepted a job and still answers (heartbeats, a "deploying"
    status) but never starts the container is suspected once deploy_timeout has passed
    since the assignment; one that reports "deployed" is not; a silent one is suspected
    for missed heartbeats as before."""
    from node.roles.checker.service import Assigned

    checkers = [ident(f"stall-checker{i}") for i in range(4)]
    provider = ident("stall-provider")
    dev = await start_embedded([GenesisChecker(c, c, ETHER) for c in checkers])
    async with checker_beside_a_provider(dev.chain, checkers[3], provider, tmp_path) as svc:
        with trio.fail_after(30):
            while not svc._status_subscribed:
                await trio.sleep(0.05)
        now = svc.clock()
        late = svc.settings.deploy_timeout + 1
        svc.assigned[7] = Assigned(provider.address, 0, 1, now - late)
        svc.status_seen[7] = (now, "deploying")  # alive, still "deploying"
        assert [(j, why) for j, _, why in svc.overdue(now)] == [
            (7, f"not deployed {svc.settings.deploy_timeout:g} s after assignment")
        ]
        svc.assigned[7].deployed = True  # it said "deployed" (or "running")
        assert svc.overdue(now) == []
        svc.assigned[8] = Assigned(provider.address, 0, 1, now - late)  # not a word since
        assert [(j, why) for j, _, why in svc.overdue(now)] == [(8, "missed heartbeats")]
        svc.assigned[9] = Assigned(provider.address, 0, 1, now)  # just assigned
        svc.status_seen[9] = (now, "deploying")
        assert [j for j, _, _ in svc.overdue(now)] == [8]
