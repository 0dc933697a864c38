"""`kaisar soak --minutes M --seed S [--json]`: a churn soak of separate node processes.

The network is ``node.procnet`` (anvil, contracts, N checker and M provider processes,
an explorer). A client in this process buys a stream of jobs; a seeded fault schedule
kills (-9) and restarts providers and checkers, pauses nodes (SIGSTOP) past the
checkers' timeouts, cuts a provider's network (cgroup + iptables; else a pause) and
restarts the explorer. At most one checker is faulted at a time (4 equal stakes: the
other three are a quorum).

Every job is followed until it ends, and must end in exactly one of:

- ``served``: the client verified the deployment (QC + provider status) and got an
  HTTP answer from the container through the tunnel, then the job was closed by its
  owner or ran its course (expired as DONE) and the provider was paid;
- ``reassigned``: the same, after at least one certified failure moved it to another
  round (and provider) where it was served again;
- ``refunded``: it ended FAILED (a certified failure after ``MAX_REASSIGNMENTS``, or
  one with less than the escrow's ``MIN_REASSIGN`` seconds of paid time left: served
  time paid, the rest refunded) or EXPIRED (never assigned within the assignment
  window, refunded).

Anything else is ``lost``: still open or assigned at the end, or ended without the
client ever being served. ``double_assigned`` counts jobs whose container ran on two
healthy providers at once (sampled from the Docker Engine; a provider within
``GRACE_S`` of a fault is not healthy yet: it learns from the chain when it is back).
``escrow_mismatch_wei`` sums, per job, |deposit - provider payments - refund -
deposit still held| from the Escrow events, plus |Escrow's balance - (deposits held
+ credited balances of the owner and providers)|.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.errors import UserError

log = logging.getLogger("kaisar.soak")

GRACE_S = 20.0  # a provider back from a fault has this long to stop a container it lost
IMAGE = "kaisar/demo-http:latest"
PORT = 8080
MAX_REASSIGNMENTS = 3  # Escrow.vy: the 4th certified failure refunds whatever is left
JOB_STATE = {1: "open", 2: "assigned", 3: "closed", 4: "done", 5: "failed", 6: "expired"}


@dataclass
class SoakSettings:
    minutes: float = 5.0
    seed: int = 1
    checkers: int = 4
    providers: int = 4
    buy_every: tuple[float, float] = (4.0, 9.0)  # seconds between purchases
    max_live: int = 3  # jobs running at once (the providers have one slot each)
    job_seconds: tuple[int, int] = (60, 90)  # bought duration (the escrow minimum is 60)
    close_fraction: float = 0.6  # jobs the owner closes early after being served
    hold_s: tuple[float, float] = (3.0, 12.0)  # served this long before an early close
    fault_every: tuple[float, float] = (10.0, 18.0)
    drain_s: float = 150.0  # after the last purchase, jobs have this long to end
    assign_timeout: int = 45  # Escrow: an unassigned job may be expired after this
    # Escrow: a failure certified with less paid time left ends the job FAILED (served time
    # paid, the rest refunded) instead of reopening it: a new assignment, deploy and tunnel
    # take ~10-30 s here, so a reassignment with less left is rarely served again.
    min_reassign: int = 30
    status_timeout: float = 6.0  # checkers: a silent provider has failed
    epoch_seconds: float = 60.0  # PoPW epochs: every provider is challenged once per epoch
    popw_target_seconds: float = 0.05  # tiny challenges: a dozen processes share the cores
    faults: tuple[str, ...] = (
        "provider_kill", "checker_kill", "provider_pause", "checker_pause",
        "provider_cut", "explorer_restart",
    )  # fmt: skip
    in_order: bool = False  # take ``faults`` in order (a fixed schedule) instead of at random


@dataclass
class Track:
    job_id: int
    bought: float
    duration: int
    close_early: bool
    hold: float
    served: dict[int, tuple[str, float]] = field(default_factory=dict)  # round -> (provider, t)
    failures: int = 0  # certified failures (Escrow.fail) seen so far
    failed_at: list[tuple[float, str, int]] = field(default_factory=list)  # (t, provider, next round)
    reassign_s: list[float] = field(default_factory=list)
    final: str = ""
    outcome: str = ""
    note: str = ""
    history: list[str] = field(default_factory=list)  # what the follower saw, for a lost job
    closed_by_owner: bool = False  # the owner's close went through (after its hold)
    _last: str = ""  # the last step said, its history line, and how often in a row
    _line: str = ""
    _repeats: int = 0

    def say(self, what: str) -> None:
        """Remember a step (seconds since bought) for a lost job's report: a step said
        again in a row updates one line ("... xN, last at T"), and the first 15 steps
        are kept besides the last 25, so a retry loop at the end (the drain's expire
        attempts) cannot push out how the job got there."""
        self.note = what[:200]
        log.info("event=soak_job job=%d %s", self.job_id, what[:300])
        at = f"{time.time() - self.bought:.1f}s"
        if what == self._last and self.history:
            self._repeats += 1
            self.history[-1] = f"{self._line} (x{self._repeats}, last at {at})"
            return
        self._last, self._line, self._repeats = what, f"{at} {what[:160]}", 1
        self.history.append(self._line)
        if len(self.history) > 40:
            del self.history[15]


@dataclass
class Fault:
    kind: str
    node: str
    start: float
    end: float = 0.0
    how: str = ""


class Soak:
    def __init__(self, net: Any, settings: SoakSettings, progress: Any = None) -> None:
        self.net = net
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.progress = progress or (lambda line: None)
        self.tracks: dict[int, Track] = {}
        self.faults: list[Fault] = []
        self.faulted: dict[str, Fault] = {}  # node name -> current fault
        self.healthy_since: dict[str, float] = {}  # node name -> end of its last fault
        self.double: set[int] = set()
        self.sample_errors = 0  # docker looks that failed (sample)
        self.not_bought = 0
        self.errors: list[str] = []
        self.live = 0
        self.buying = True

    # faults ------------------------------------------------------------------------

    def _provider_by_address(self, address: str) -> Any:
        for p in self.net.providers:
            if p.address.lower() == address.lower():
                return p
        return None

    async def fault_loop(self, until: float) -> None:
        async with trio.open_nursery() as nursery:
            n = 0
            while time.time() < until:
                await trio.sleep(self.rng.uniform(*self.s.fault_every))
                if time.time() >= until:
                    break
                if self.s.in_order:
                    kind = self.s.faults[n % len(self.s.faults)]
                else:
                    kind = self.rng.choice(self.s.faults)
                role = kind.split("_")[0]
                if role == "explorer":
                    if self.net.explorer is None:
                        continue
                    nodes = [self.net.explorer]
                else:
                    nodes = self.net.checkers if role == "checker" else self.net.providers
                # at most one checker and half the providers faulted at once
                busy = [n for n in nodes if n.name in self.faulted]
                limit = 1 if role in ("checker", "explorer") else max(1, len(nodes) // 2)
                if len(busy) >= limit:
                    continue
                node = self.rng.choice([x for x in nodes if x.name not in self.faulted])
                n += 1
                long = self.s.status_timeout + self.rng.uniform(2.0, 6.0)
                down = {"kill": self.rng.uniform(1.0, 5.0), "pause": long, "cut": long,
                        "restart": 0.0}[kind.split("_")[1]]  # fmt: skip
                nursery.start_soon(self._fault, kind, node, down)

    async def _fault(self, kind: str, node: Any, down: float) -> None:
        f = Fault(kind, node.name, time.time())
        self.faults.append(f)
        self.faulted[node.name] = f
        action = kind.split("_")[1]
        try:
            if action in ("kill", "restart"):
                node.kill9()
                f.how = "kill -9"
                await trio.sleep(down)
                offset = node.start()
                await self.net.wait_started(node, offset, timeout=90)
            elif action == "pause":
                node.pause()
                f.how = "SIGSTOP"
                await trio.sleep(down)
                node.resume()
            elif action == "cut":
                f.how = node.cut()
                await trio.sleep(down)
                node.restore()
        except Exception as exc:  # a node that does not come back is a finding
            self.errors.append(f"{kind} {node.name}: {exc}"[:500])
            log.warning("event=soak_fault_failed kind=%s node=%s err=%s", kind, node.name, exc)
        finally:
            f.end = time.time()
            self.healthy_since[node.name] = f.end
            self.faulted.pop(node.name, None)
            self.progress(f"fault {kind} {node.name} ({f.how}) {f.end - f.start:.1f} s")

    def fault_start_before(self, node_name: str, t: float) -> float | None:
        starts = [f.start for f in self.faults if f.node == node_name and f.start <= t]
        return max(starts) if starts else None

    # double assignment --------------------------------------------------------------------

    def _healthy(self, name: str, now: float) -> bool:
        return name not in self.faulted and now - self.healthy_since.get(name, 0.0) > GRACE_S

    async def sample_loop(self, docker_host: str | None) -> None:
        import docker

        client = await trio.to_thread.run_sync(lambda: docker.DockerClient(base_url=docker_host))
        try:
            while True:
                await self.sample(client)
                await trio.sleep(2.0)
        finally:
            client.close()

    async def sample(self, client: Any) -> None:
        """One look at the running job containers; a job on two healthy providers is
        double-assigned. A failed look is logged and skipped, never the soak's end: a
        container removed between docker's list and its inspect once ended a 30-minute
        soak after 3 minutes (404 "No such container")."""
        import docker

        names = {p.address: p.name for p in self.net.providers}
        try:
            running = await trio.to_thread.run_sync(
                lambda: client.containers.list(filters={"label": "kaisar.job"}, ignore_removed=True)
            )
        except (docker.errors.DockerException, OSError) as exc:
            self.sample_errors += 1
            log.warning("event=soak_sample_failed err=%s", exc)
            return
        now = time.time()
        by_job: dict[int, set[str]] = {}
        for c in running:
            node = c.labels.get("kaisar.node", "")
            if node in names:
                by_job.setdefault(int(c.labels["kaisar.job"]), set()).add(names[node])
        for job, nodes in by_job.items():
            if len([n for n in nodes if self._healthy(n, now)]) > 1:
                if job not in self.double:
                    log.warning("event=soak_double job=%d nodes=%s", job, sorted(nodes))
                self.double.add(job)

    # jobs -------------------------------------------------------------------------------------

    async def buy_loop(self, client: Any, until: float, nursery: trio.Nursery) -> None:
        from node.client.errors import NoProviderFits

        while time.time() < until:
            await trio.sleep(self.rng.uniform(*self.s.buy_every))
            if self.live >= self.s.max_live or time.time() >= until:
                continue
            seconds = self.rng.randint(*self.s.job_seconds)
            try:
                job = await client.buy("cpu", 1, IMAGE, PORT, hours=seconds / 3600)
            except NoProviderFits:
                self.not_bought += 1
                continue
            except Exception as exc:
                self.errors.append(f"buy: {exc}"[:300])
                continue
            t = Track(job, time.time(), seconds, self.rng.random() < self.s.close_fraction,
                      self.rng.uniform(*self.s.hold_s))  # fmt: skip
            self.tracks[job] = t
            self.live += 1
            self.progress(f"bought job {job} ({seconds} s)")
            nursery.start_soon(self.follow, client, t)

    async def follow(self, client: Any, t: Track) -> None:
        from node.chain.api import JOB_ASSIGNED, JOB_OPEN
        from node.chain.errors import ChainError
        from node.client.errors import ClientError

        deadline = t.bought + t.duration + self.s.drain_s
        last_provider = ""
        last_seen: tuple[int, int, str] = (0, -1, "")
        try:
            while time.time() < deadline:
                try:
                    job = await client.chain.get_job(t.job_id)
                except ChainError as exc:
                    t.say(f"get_job: {exc}")
                    await trio.sleep(1.0)
                    continue
                now = time.time()
                seen = (job.state, job.round, job.provider)
                if seen != last_seen:
                    last_seen = seen
                    t.say(f"chain {JOB_STATE.get(job.state)} r{job.round} {job.provider[:10]}")
                if job.failures > t.failures:  # a certified failure reopened the job
                    t.failures = job.failures
                    t.failed_at.append((now, last_provider, job.round))
                if job.state == JOB_ASSIGNED:
                    last_provider = job.provider
                if job.state == JOB_OPEN:
                    if now - job.opened_at > self.s.assign_timeout + 2:
                        await self._try(client.chain.expire_job(self.net.user, t.job_id), t)
                elif job.state == JOB_ASSIGNED:
                    end = job.started + job.remaining
                    if job.round not in t.served:
                        await self._serve(client, t, job)
                    elif t.close_early and now - t.served[job.round][1] > t.hold:
                        if await self._try(client.close(t.job_id), t):
                            t.closed_by_owner = True
                        continue
                    if time.time() >= end + 2:
                        await self._try(client.chain.expire_job(self.net.user, t.job_id), t)
                        continue
                else:
                    t.final = JOB_STATE.get(job.state, str(job.state))
                    return
                await trio.sleep(1.0)
            t.say("did not end in time")
        except ClientError as exc:
            t.say(f"follow: {exc}")
        finally:
            self.live -= 1
            self.progress(f"job {t.job_id}: {t.final or 'unfinished'} served rounds {sorted(t.served)}")

    async def _try(self, call: Any, t: Track) -> bool:
        """Await ``call``; False (and noted) if the chain or client refused it."""
        from node.chain.errors import ChainError
        from node.client.errors import ClientError

        ok = True
        try:
            await call
        except (ChainError, ClientError) as exc:  # someone else ended it first, or not yet
            t.say(str(exc))
            ok = False
        await trio.sleep(0.5)
        return ok

    async def _serve(self, client: Any, t: Track, job: Any) -> None:
        """Verify the deployment and get an HTTP answer through a tunnel."""
        from node.client.errors import ClientError

        try:
            dep = await client.wait_deployed(t.job_id, timeout=8)
        except ClientError as exc:
            t.say(f"wait r{job.round}: {exc}")
            return
        if dep.round != job.round:
            t.say(f"verified round {dep.round}, chain says {job.round}")
            return
        try:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(client.connect, t.job_id, 0)
                with trio.move_on_after(15):
                    from node.procnet import http_get

                    answer = await trio.to_thread.run_sync(http_get, port, f"/cgi-bin/echo?job={t.job_id}")
                    if b" 200 " in answer.split(b"\r\n")[0] and f"job={t.job_id}".encode() in answer:
                        now = time.time()
                        t.served[job.round] = (dep.provider, now)
                        self._note_reassign(t, job.round, now)
                        t.say(f"served r{job.round} by {dep.provider[:10]}")
                    else:
                        t.say(f"http r{job.round}: {answer[:60]!r}")
                nursery.cancel_scope.cancel()
        except Exception as exc:  # the provider went away mid-request: try again later
            t.say(f"tunnel r{job.round}: {exc!r}")

    def _note_reassign(self, t: Track, round_: int, served_at: float) -> None:
        """Served again after a certified failure: time from the failed provider's fault
        (or, without a recorded fault, from seeing the failure) to being served."""
        pending = [f for f in t.failed_at if f[2] <= round_]
        if not pending or len(t.reassign_s) >= len(pending):
            return
        seen, provider, _ = pending[len(t.reassign_s)]
        since = seen
        node = self._provider_by_address(provider) if provider else None
        start = self.fault_start_before(node.name, seen) if node else None
        if start is not None and seen - start < 120:
            since = start
        t.reassign_s.append(served_at - since)

    # results --------------------------------------------------------------------------------

    def classify(self, t: Track, paid: dict[int, int]) -> str:
        if t.final in ("failed", "expired"):
            return "refunded"
        if t.final in ("closed", "done") and t.served:
            if t.final == "done" and paid.get(t.job_id, 0) == 0:
                return "lost"  # ran its course but nobody was paid
            if t.failed_at:  # served again after the (last) certified failure?
                if max(t.served) >= t.failed_at[-1][2]:
                    return "reassigned"
                # The owner closed it, served as long as it wanted, while a failure was
                # moving it to a new round (the close raced the failure): served, closed
                # and paid, as long as the provider was paid for the time served.
                if t.final == "closed" and t.closed_by_owner and paid.get(t.job_id, 0) > 0:
                    return "served"
                return "lost"
            return "served"
        return "lost"

    async def escrow_mismatch(self) -> tuple[int, dict[int, int]]:
        net = self.net
        chain = net.chain
        events = await net.escrow_events()
        deposit: dict[int, int] = {}
        paid: dict[int, int] = {}
        refund: dict[int, int] = {}
        for e in events:
            a = e.args
            j = int(a.get("job_id", -1))
            if e.name == "JobCreated":
                deposit[j] = deposit.get(j, 0) + int(a["price"]) * int(a["duration"])
            elif e.name == "JobExtended":
                job = await chain.get_job(j)
                deposit[j] = deposit.get(j, 0) + int(a["seconds"]) * job.price
            elif e.name == "ProviderPaid":
                paid[j] = paid.get(j, 0) + int(a["amount"])
            elif e.name == "JobClosed":
                refund[j] = refund.get(j, 0) + int(a["refund"])
        mismatch = 0
        held = 0
        for j, dep in deposit.items():
            job = await chain.get_job(j)
            held += job.deposit
            mismatch += abs(dep - paid.get(j, 0) - refund.get(j, 0) - job.deposit)
        accounts = [net.user.address] + [p.address for p in net.providers]
        credited = 0
        for a in accounts:
            credited += await chain.client.call(chain.escrow.functions.balances(a))
        balance = await chain.client.run(chain.client.w3.eth.get_balance, chain.escrow.address)
        mismatch += abs(balance - held - credited)
        return mismatch, paid

    def unassigned_reasons(self) -> tuple[dict[str, int], dict[str, int]]:
        """Why jobs refunded unassigned (EXPIRED) never got a provider, from the checkers'
        ``event=job_unassigned`` lines (rounds without a QC per reason, docs/CHECKER.md):
        jobs by the reason most of their rounds had (summed over checkers), and rounds
        per reason over all those jobs. "unknown": no checker logged the job (e.g. every
        one restarted meanwhile)."""
        want = {t.job_id for t in self.tracks.values() if t.final == "expired"}
        per_job: dict[int, Counter[str]] = {}
        for c in self.net.checkers:
            for line in c.log_text().splitlines():
                if "event=job_unassigned " not in line:
                    continue
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                try:
                    job = int(fields.get("job", ""))
                except ValueError:
                    continue
                if job not in want:
                    continue
                tally = per_job.setdefault(job, Counter())
                for item in fields.get("reasons", "").split(","):
                    reason, _, n = item.partition(":")
                    if n.isdigit():
                        tally[reason] += int(n)
        jobs: Counter[str] = Counter()
        rounds: Counter[str] = Counter()
        for j in want:
            found = per_job.get(j)
            jobs[found.most_common(1)[0][0] if found else "unknown"] += 1
            rounds.update(found or {})
        return dict(jobs), dict(rounds)

    async def _chain_record(self, job_id: int) -> str:
        """The job as the chain has it now, next to the latest block's time."""
        chain = self.net.chain
        try:
            job = await chain.get_job(job_id)
            block = await chain.client.get_block("latest")
        except Exception as exc:
            return f"unreadable: {exc}"[:200]
        return (f"{JOB_STATE.get(job.state, job.state)} r{job.round} provider {job.provider[:10]} "
                f"failures {job.failures} started {job.started} remaining {job.remaining} "
                f"block {block['number']} at {block['timestamp']} (wall {time.time():.0f})")  # fmt: skip

    async def report(self, started: float) -> dict[str, Any]:
        mismatch, paid = await self.escrow_mismatch()
        counts = {"served": 0, "reassigned": 0, "refunded": 0, "lost": 0}
        lost = []
        for t in self.tracks.values():
            t.outcome = self.classify(t, paid)
            counts[t.outcome] += 1
            if t.outcome == "lost":
                lost.append({"job": t.job_id, "final": t.final or "unfinished",
                             "served_rounds": sorted(t.served), "note": t.note,
                             "chain": await self._chain_record(t.job_id),
                             "history": t.history})  # fmt: skip
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        reassign = [s for t in self.tracks.values() for s in t.reassign_s]
        why_jobs, why_rounds = self.unassigned_reasons()
        return {
            "seed": self.s.seed,
            "minutes": self.s.minutes,
            "checkers": len(self.net.checkers),
            "providers": len(self.net.providers),
            "jobs": len(self.tracks),
            **counts,
            "refunded_unassigned": sum(t.final == "expired" for t in self.tracks.values()),
            # FAILED with reassignments to spare: the last certified failure came with less
            # than min_reassign seconds of paid time left (served time paid, rest refunded)
            "refunded_late_failure": sum(
                t.final == "failed" and 0 < t.failures <= MAX_REASSIGNMENTS
                for t in self.tracks.values()
            ),
            "unassigned_reasons": why_jobs,  # refunded_unassigned jobs by main reason
            "unassigned_rounds": why_rounds,  # their rounds without a QC, by reason
            "double_assigned": len(self.double),
            "max_reassign_s": round(max(reassign), 1) if reassign else 0.0,
            "escrow_mismatch_wei": mismatch,
            "faults": kinds,
            "network_cut": "netcut" if self.net.netcut.available else "pause",
            "not_bought": self.not_bought,
            "errors": self.errors[:20],
            "lost_jobs": lost[:20],
            "double_jobs": sorted(self.double)[:20],
            "sample_errors": self.sample_errors,
            "wall_s": round(time.time() - started, 1),
        }


async def run_soak(
    settings: SoakSettings,
    workdir: Path,
    *,
    docker_host: str | None,
    progress: Any = None,
    after: Any = None,
) -> dict[str, Any]:
    """Run the soak; ``after(net, result)`` (if given) inspects the network before it stops."""
    from node.chain.deploy import DeployParams
    from node.procnet import open_procnet

    say = progress or (lambda line: None)
    started = time.time()
    async with open_procnet(
        workdir, checkers=settings.checkers, providers=settings.providers, explorer=True,
        docker_host=docker_host, network="soak",
        checker_opts={"status_timeout": settings.status_timeout, "epoch_seconds": settings.epoch_seconds,
                      "popw_target_seconds": settings.popw_target_seconds},
        deploy_params=DeployParams(assign_timeout=settings.assign_timeout,
                                   min_reassign=settings.min_reassign),
    ) as net:  # fmt: skip
        say(f"network up in {time.time() - started:.1f} s: {workdir}")
        soak = Soak(net, settings, say)
        await net.wait_standing(max(1, settings.providers // 2))
        say(f"PoPW standing after {time.time() - started:.1f} s")
        async with net.client() as client:
            await client.fitting_offers("cpu", 1, wait=60)
            until = time.time() + settings.minutes * 60
            async with trio.open_nursery() as outer:
                outer.start_soon(soak.sample_loop, docker_host)
                async with trio.open_nursery() as jobs:
                    jobs.start_soon(soak.fault_loop, until)
                    await soak.buy_loop(client, until, jobs)
                    say("purchases done; draining")
                outer.cancel_scope.cancel()
            result = await soak.report(started)
            if after is not None:
                await after(net, result)
            return result


def register(sub: Any) -> None:
    p = sub.add_parser("soak", help="churn soak: node processes, purchases, kill -9 / pause / network faults")
    p.add_argument("--minutes", type=float, default=5.0, help="how long purchases and faults go on")
    p.add_argument("--seed", type=int, default=1, help="seed of the purchase and fault schedule")
    p.add_argument("--checkers", type=int, default=4)
    p.add_argument("--providers", type=int, default=4)
    p.add_argument("--workdir", type=Path, help="keep the network's files here (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_soak)


def cmd_soak(args: Any) -> int:
    import tempfile

    from node.roles.provider.engine import ensure_engine

    if not 0 < args.minutes <= 24 * 60:
        raise UserError(f"bad --minutes {args.minutes}: 0 < minutes <= 1440")
    if not (4 <= args.checkers <= 16 and 2 <= args.providers <= 16):
        raise UserError("--checkers 4..16 and --providers 2..16")
    docker_host = ensure_engine()
    settings = SoakSettings(minutes=args.minutes, seed=args.seed, checkers=args.checkers,
                            providers=args.providers, max_live=max(1, args.providers - 1))  # fmt: skip

    def say(line: str) -> None:
        if not args.json:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    if args.workdir:
        result = trio.run(lambda: run_soak(settings, args.workdir, docker_host=docker_host, progress=say))
    else:
        with tempfile.TemporaryDirectory(prefix="kaisar-soak-") as d:
            result = trio.run(lambda: run_soak(settings, Path(d), docker_host=docker_host, progress=say))
    print(json.dumps(result, indent=None if args.json else 2))
    ok = result["lost"] == 0 and result["double_assigned"] == 0 and result["escrow_mismatch_wei"] == 0
    if not ok:
        print("soak: FAILED (lost, double-assigned or escrow mismatch)", file=sys.stderr)
    return 0 if ok else 1
