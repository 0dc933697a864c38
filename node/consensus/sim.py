"""Deterministic simulation of the assignment protocol: real rules, real signatures.

A seeded discrete-event network (delays, drops, partitions, crashes, restarts) carries
the messages of honest ``AssignmentMachine``s and of Byzantine checkers
(``sim_byzantine``). Providers deploy only on a QC they verify; the chain accepts the
first valid QC per job. A monitor that does not trust the rules under test checks:

- safety: no job with valid-by-oracle QCs (or decisions) for two providers; nothing
  accepted below 2/3 stake; no deploy without a valid QC; no evidence against an
  honest checker;
- liveness: every job assigned on chain, within ``round_bound`` rounds where the
  scenario has one (f crashed of n = 3f+1);
- evidence: every equivocation that reached an honest checker produced evidence.

Randomness comes only from ``random.Random(seed)``; keys are derived from the seed, so
one (seed, rounds) always gives the same report.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from fractions import Fraction
from itertools import count

from eth_utils import keccak

from node.consensus import assignment as rules
from node.consensus.checkers import CheckerSet, make_checker_set
from node.consensus.evidence import KIND_ASSIGN, verify_evidence
from node.consensus.machine import (
    AssignmentMachine,
    Broadcast,
    Decided,
    Send,
    Slash,
    StartTimer,
)
from node.consensus.qc import (
    AssignQC,
    InvalidVote,
    Proposal,
    SignedAssignVote,
    SignedPrevote,
    is_valid_assign_qc,
    recover_signer,
    verify_proposal,
)
from node.consensus.scheduler import JobSpec, ProviderInfo
from node.consensus.sim_byzantine import BEHAVIOURS, ByzantineChecker
from node.consensus.store import VoteStore
from node.eip712 import Domain
from node.identity import Identity

SIM_DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "5a" * 20)
FOREIGN_DOMAIN = Domain(chain_id=1, verifying_contract="0x" + "5a" * 20)  # replay source
SIM_TIMEOUT_BASE = 0.25  # seconds of simulated time
JOB_INTERVAL = 0.05
DRAIN_SECONDS = 120.0
ADVERSARY_DELAY = 3.0  # extra delay of a message the adversarial network slows
# The adversarial network slows honest votes only in the first rounds of a job (partial
# synchrony: after that, "GST", messages arrive in time and liveness is required).
ADVERSARY_ROUNDS = 8
GPU_CLASSES = ("A100", "H100")


@dataclass(frozen=True)
class Scenario:
    name: str
    n: int
    byzantine: dict[int, str] = field(default_factory=dict)  # checker index -> behaviour
    crashed: tuple[int, ...] = ()  # crashed from the start
    crash_at: tuple[tuple[int, float], ...] = ()  # (index, fraction of the job stream)
    restart: tuple[tuple[int, float, float], ...] = ()  # (index, down, up) fractions
    partition: tuple[float, float] | None = None  # first half | second half, fractions
    drop: float = 0.0
    delay: tuple[float, float] = (0.002, 0.03)
    stakes: tuple[int, ...] | None = None
    round_bound: int | None = None  # liveness: assigned within this many rounds
    adversary: bool = False  # the network slows honest-to-honest votes in early rounds
    view_noise: float = 0.0  # chance that a checker's view of a provider is stale


def default_scenarios() -> list[Scenario]:
    return [
        Scenario("honest-4", 4, round_bound=1),
        Scenario("honest-7-lossy", 7, drop=0.02, delay=(0.002, 0.1), round_bound=7),
        Scenario("crash-1-of-4", 4, crashed=(0,), round_bound=2),
        Scenario("crash-2-of-7", 7, crashed=(0,), crash_at=((1, 0.5),), round_bound=3),
        Scenario("crash-restart-7", 7, restart=((2, 0.3, 0.6), (3, 0.4, 0.7)), round_bound=7),
        Scenario("partition-heal-7", 7, partition=(0.2, 0.6)),
        Scenario("divergent-views-7", 7, view_noise=0.3, round_bound=7),
        Scenario(
            "divergent-views-byzantine-7",
            7,
            byzantine={0: "equivocating-leader", 1: "lock-breaker"},
            view_noise=0.3,
            adversary=True,
        ),
        # The Byzantine checker holds 12 of 37 stake: just under a third.
        Scenario("unequal-stake-4", 4, byzantine={3: "equivocating-leader"}, stakes=(10, 7, 8, 12)),
        Scenario("equivocating-leader-4", 4, byzantine={0: "equivocating-leader"}),
        Scenario(
            "equivocating-leader-7",
            7,
            byzantine={0: "equivocating-leader", 1: "equivocating-leader"},
            drop=0.01,
        ),
        Scenario(
            "equivocating-voter-7", 7, byzantine={0: "equivocating-voter", 1: "equivocating-voter"}
        ),
        Scenario("forged-signatures-4", 4, byzantine={0: "forger"}),
        Scenario("replayed-votes-4", 4, byzantine={0: "replayer"}),
        Scenario("withheld-votes-7", 7, byzantine={0: "withholder", 1: "withholder"}),
        Scenario("lock-attack-4", 4, byzantine={0: "lock-breaker"}, adversary=True),
        Scenario(
            "lock-attack-7",
            7,
            byzantine={0: "lock-breaker", 1: "lock-breaker"},
            adversary=True,
        ),
        Scenario(
            "mixed-byzantine-7",
            7,
            byzantine={0: "withholder", 1: "equivocating-leader"},
            drop=0.01,
            delay=(0.002, 0.08),
        ),
    ]


def seeded_identity(seed: int, label: str) -> Identity:
    return Identity(keccak(f"kaisar-sim/{seed}/{label}".encode()))


class Oracle:
    """Independent QC check: exact fractions, own duplicate/unknown logic."""

    def __init__(self, domain: Domain, checkers: CheckerSet) -> None:
        self.domain, self.checkers = domain, checkers
        self.cache: dict[tuple, bool] = {}

    def signers(self, qc: AssignQC) -> list[str | None]:
        return [recover_signer(qc.digest(self.domain), s) for s in qc.signatures]

    def valid(self, qc: AssignQC) -> bool:
        key = (qc.job_id, qc.round, qc.provider, qc.signatures)
        if key not in self.cache:
            signers = self.signers(qc)
            ok = (
                None not in signers
                and len(set(signers)) == len(signers)
                and all(s in self.checkers for s in signers)
                and Fraction(self.checkers.stake_of_all(signers), self.checkers.total_stake)  # type: ignore[arg-type]
                >= Fraction(2, 3)
            )
            self.cache[key] = ok
        return self.cache[key]


@dataclass
class Counts:
    jobs: int = 0
    assigned: int = 0
    rounds_run: int = 0
    max_rounds_to_assign: int = 0
    messages: int = 0
    dropped: int = 0
    rejected: int = 0
    conflicting_qcs: int = 0
    qc_below_quorum: int = 0
    deploy_without_qc: int = 0
    evidence_against_honest: int = 0
    equivocations: int = 0
    evidence_detected: int = 0
    equivocating_proposals: int = 0  # a leader's second proposal in a round, seen by honest
    undecided: int = 0
    over_round_bound: int = 0

    @property
    def safety_violations(self) -> int:
        return (
            self.conflicting_qcs
            + self.qc_below_quorum
            + self.deploy_without_qc
            + self.evidence_against_honest
        )


class Simulation:
    def __init__(self, scenario: Scenario, jobs: int, seed: int) -> None:
        self.sc, self.n_jobs = scenario, jobs
        self.rng = random.Random(f"{seed}/{scenario.name}")
        self.now = 0.0
        self.queue: list[tuple[float, int, tuple]] = []
        self.seq = count()
        self.ids = [seeded_identity(seed, f"checker{i}") for i in range(scenario.n)]
        stakes = scenario.stakes or (10,) * scenario.n
        self.checkers = make_checker_set(
            (i.address, s) for i, s in zip(self.ids, stakes, strict=True)
        )
        self.oracle = Oracle(SIM_DOMAIN, self.checkers)
        self.providers = self._make_providers(seed)
        self.byz_addresses = {self.ids[i].address for i in scenario.byzantine}
        self.stores = [VoteStore(":memory:") for _ in range(scenario.n)]
        self.nodes: list[AssignmentMachine | ByzantineChecker | None] = [
            self._make_node(i) for i in range(scenario.n)
        ]
        self.down: set[int] = set(scenario.crashed)
        self.counts = Counts(jobs=jobs)
        self.specs: dict[int, JobSpec] = {}
        self.chain: dict[int, AssignQC] = {}
        self.deployed: dict[int, str] = {}
        self.certified: dict[int, set[str]] = defaultdict(set)  # job -> providers with a QC
        self.net_votes: dict[tuple[int, int, str], set[str]] = defaultdict(set)
        self.byz_seen: dict[tuple[int, str, int, int], set[str]] = defaultdict(set)
        self.evidence_keys: set[tuple[str, int, int]] = set()
        self.max_round: dict[int, int] = defaultdict(int)
        self.partitioned = False
        self.relayed: list[set[Proposal]] = [set() for _ in range(scenario.n)]
        self.index = {ident.address: i for i, ident in enumerate(self.ids)}

    # setup ------------------------------------------------------------------

    def _make_providers(self, seed: int) -> tuple[ProviderInfo, ...]:
        out = []
        for k in range(8):
            addr = seeded_identity(seed, f"provider{k}").address
            out.append(
                ProviderInfo(
                    address=addr,
                    gpu_class=GPU_CLASSES[k % 2],
                    free_gpus=8,
                    price=100 + 10 * (k // 2),
                    last_pass_epoch=None if k == 7 else 0,
                    score=k % 3,
                )
            )
        return tuple(out)

    def _make_node(self, i: int) -> AssignmentMachine | ByzantineChecker:
        if i in self.sc.byzantine:
            cls = BEHAVIOURS[self.sc.byzantine[i]]
            return cls(self.ids[i], SIM_DOMAIN, self.checkers, self, FOREIGN_DOMAIN)
        return AssignmentMachine(
            self.ids[i], SIM_DOMAIN, self.checkers, self.stores[i], timeout_base=SIM_TIMEOUT_BASE
        )

    # network ----------------------------------------------------------------

    def at(self, t: float, event: tuple) -> None:
        heapq.heappush(self.queue, (t, next(self.seq), event))

    def side(self, i: int) -> int:
        return 0 if i < self.sc.n // 2 else 1

    def send(self, src: int, dst: int, msg: object) -> None:
        """Point-to-point delivery (gossip is modelled as one send per peer)."""
        self.counts.messages += 1
        if isinstance(msg, SignedAssignVote):
            self._watch_vote(msg)
        elif isinstance(msg, AssignQC):
            self._watch_qc(msg)
        if self.partitioned and self.side(src) != self.side(dst):
            self.counts.dropped += 1
            return
        if src != dst and self.rng.random() < self.sc.drop:
            self.counts.dropped += 1
            return
        delay = self.rng.uniform(*self.sc.delay)
        if self.sc.adversary and self._slowed(src, dst, msg):
            delay += ADVERSARY_DELAY
        self.at(self.now + delay, ("msg", dst, msg, src))

    def _slowed(self, src: int, dst: int, msg: object) -> bool:
        """Adversarial scheduling: in a job's first ADVERSARY_ROUNDS rounds, votes between
        honest checkers crawl, so only Byzantine leaders complete rounds (and may hide
        what they complete); proposals and certificates travel normally."""
        byz = self.sc.byzantine
        if not isinstance(msg, SignedPrevote | SignedAssignVote) or src in byz or dst in byz:
            return False
        return msg.round < ADVERSARY_ROUNDS

    def broadcast(self, src: int, msg: object) -> None:
        for dst in range(self.sc.n):
            if dst != src:
                self.send(src, dst, msg)

    def to_provider_and_chain(self, msg: AssignQC) -> None:
        self.at(self.now + self.rng.uniform(*self.sc.delay), ("deploy", msg))
        self.at(self.now + self.rng.uniform(*self.sc.delay), ("chain", msg))

    # monitor ----------------------------------------------------------------

    def _watch_vote(self, vote: SignedAssignVote) -> None:
        if recover_signer(vote.digest(SIM_DOMAIN), vote.signature) != vote.signer:
            return
        if vote.signer not in self.checkers:
            return
        signers = self.net_votes[(vote.job_id, vote.round, vote.provider)]
        signers.add(vote.signer)
        if Fraction(self.checkers.stake_of_all(signers), self.checkers.total_stake) >= Fraction(
            2, 3
        ):
            self._certify(vote.job_id, vote.provider)

    def _watch_qc(self, qc: AssignQC) -> None:
        if self.oracle.valid(qc):
            self._certify(qc.job_id, qc.provider)

    def _certify(self, job_id: int, provider: str) -> None:
        providers = self.certified[job_id]
        if provider not in providers:
            providers.add(provider)
            if len(providers) == 2:
                self.counts.conflicting_qcs += 1

    def _accepted(self, qc: AssignQC) -> None:
        """An honest checker, provider or the chain accepted ``qc``."""
        if not self.oracle.valid(qc):
            self.counts.qc_below_quorum += 1
        self._certify(qc.job_id, qc.provider)

    # handlers -----------------------------------------------------------------

    def deliver(self, i: int, msg: object, src: int) -> None:
        node = self.nodes[i]
        if i in self.down or node is None:
            return
        if isinstance(node, ByzantineChecker):
            node.receive(src, msg)
            return
        if isinstance(msg, Proposal):
            # Gossip: an honest node forwards each valid proposal once (the topic validator
            # drops invalid ones), so a proposal sent to a few peers reaches everyone.
            if msg in self.relayed[i]:
                return
            self.relayed[i].add(msg)
            if self._valid_proposal(msg):
                for dst in range(self.sc.n):
                    if dst not in (i, src):
                        self.send(i, dst, msg)
        elif isinstance(msg, SignedAssignVote) and msg.signer in self.byz_addresses:
            if recover_signer(msg.digest(SIM_DOMAIN), msg.signature) == msg.signer:
                self.byz_seen[(i, msg.signer, msg.job_id, msg.round)].add(msg.provider)
        self.apply(i, node.on_message(msg))  # type: ignore[arg-type]

    def _valid_proposal(self, p: Proposal) -> bool:
        if not rules.is_proposal(self.checkers, p.job_id, p.round, p.prevote.signer):
            return False
        try:
            verify_proposal(SIM_DOMAIN, self.checkers, p)
        except (InvalidVote, ValueError):
            return False
        return True

    def apply(self, i: int, outputs: list) -> None:
        for out in outputs:
            if isinstance(out, Broadcast):
                self.broadcast(i, out.message)
            elif isinstance(out, Send):
                self.send(i, self.index[out.to], out.message)
            elif isinstance(out, StartTimer):
                self.max_round[out.job_id] = max(self.max_round[out.job_id], out.round)
                kind = "propose" if out.propose else "timeout"
                self.at(self.now + out.seconds, (kind, i, out.job_id, out.round))
            elif isinstance(out, Decided):
                self._accepted(out.qc)
                self.to_provider_and_chain(out.qc)
            elif isinstance(out, Slash):
                ev = out.evidence
                verify_evidence(SIM_DOMAIN, ev)
                key = (ev.signer, ev.message_a["jobId"], ev.message_a["round"])
                assert ev.kind == KIND_ASSIGN
                if ev.signer not in self.byz_addresses:
                    self.counts.evidence_against_honest += 1
                self.evidence_keys.add(key)

    def deploy(self, qc: AssignQC) -> None:
        """The named provider checks the QC itself before starting the container."""
        if qc.job_id in self.deployed or not is_valid_assign_qc(SIM_DOMAIN, self.checkers, qc):
            return
        if not self.oracle.valid(qc):
            self.counts.deploy_without_qc += 1
        self.deployed[qc.job_id] = qc.provider
        self._accepted(qc)

    def chain_submit(self, qc: AssignQC) -> None:
        """First valid QC per job wins (the escrow contract's rule)."""
        if qc.job_id in self.chain or not is_valid_assign_qc(SIM_DOMAIN, self.checkers, qc):
            return
        self.chain[qc.job_id] = qc
        self._accepted(qc)
        if qc.job_id in self.specs:
            rounds = qc.round + 1
            self.counts.max_rounds_to_assign = max(self.counts.max_rounds_to_assign, rounds)
            if self.sc.round_bound is not None and rounds > self.sc.round_bound:
                self.counts.over_round_bound += 1

    def new_job(self, job_id: int) -> None:
        spec = JobSpec(job_id, GPU_CLASSES[job_id % 2], 1 + job_id % 4, max_price=10_000)
        self.specs[job_id] = spec
        for i in range(self.sc.n):
            # Each checker sees the chain event a little apart from the others.
            self.at(self.now + self.rng.uniform(0, self.sc.delay[1]), ("job", i, job_id))

    def start_job(self, i: int, job_id: int) -> None:
        node = self.nodes[i]
        if i in self.down or node is None:
            return
        outputs = node.on_job(self.specs[job_id], self.view(), 0)
        if isinstance(node, AssignmentMachine):
            self.apply(i, outputs)

    def view(self) -> tuple[ProviderInfo, ...]:
        """One checker's provider table: with ``view_noise``, stale capacity and price."""
        if not self.sc.view_noise:
            return self.providers
        out = []
        for p in self.providers:
            if self.rng.random() < self.sc.view_noise:
                p = replace(
                    p, free_gpus=self.rng.randint(0, 8), price=p.price + self.rng.randint(-15, 15)
                )
            out.append(p)
        return tuple(out)

    def restart_node(self, i: int) -> None:
        """Fresh machine over the same store; re-reads undecided jobs from the chain."""
        self.down.discard(i)
        self.nodes[i] = self._make_node(i)
        for job_id in sorted(self.specs):
            if job_id not in self.chain:
                self.start_job(i, job_id)

    # run ------------------------------------------------------------------------

    def run(self) -> Counts:
        total = self.n_jobs * JOB_INTERVAL
        for j in range(self.n_jobs):
            self.at(j * JOB_INTERVAL, ("newjob", j))
        for i, frac in self.sc.crash_at:
            self.at(frac * total, ("crash", i))
        for i, down, up in self.sc.restart:
            self.at(down * total, ("crash", i))
            self.at(up * total, ("restart", i))
        if self.sc.partition:
            self.at(self.sc.partition[0] * total, ("partition", True))
            self.at(self.sc.partition[1] * total, ("partition", False))
        end = total + DRAIN_SECONDS
        while self.queue:
            t, _, ev = heapq.heappop(self.queue)
            if t > end:
                break
            self.now = t
            kind = ev[0]
            if kind == "msg":
                self.deliver(ev[1], ev[2], ev[3])
            elif kind in ("timeout", "propose"):
                node = self.nodes[ev[1]]
                if ev[1] not in self.down and node is not None:
                    if kind == "timeout":
                        out = node.on_timeout(ev[2], ev[3])
                    else:
                        out = node.on_propose_timeout(ev[2], ev[3])
                    if isinstance(node, AssignmentMachine):
                        self.apply(ev[1], out)
            elif kind == "job":
                self.start_job(ev[1], ev[2])
            elif kind == "newjob":
                self.new_job(ev[1])
            elif kind == "deploy":
                self.deploy(ev[1])
            elif kind == "chain":
                self.chain_submit(ev[1])
            elif kind == "crash":
                self.down.add(ev[1])
            elif kind == "restart":
                self.restart_node(ev[1])
            elif kind == "partition":
                self.partitioned = ev[1]
            if len(self.chain) == self.n_jobs and all(j in self.deployed for j in self.chain):
                break
        return self._finish()

    def _finish(self) -> Counts:
        c = self.counts
        c.assigned = len(self.chain)
        c.rounds_run = sum(self.max_round[j] + 1 for j in self.specs)  # rounds opened per job
        c.undecided = self.n_jobs - c.assigned
        honest = [m for m in self.nodes if isinstance(m, AssignmentMachine)]
        c.rejected = sum(m.rejected for m in honest)
        c.equivocating_proposals = sum(m.equivocating_proposals for m in honest)
        equivocations = {
            (s, j, r) for (_, s, j, r), provs in self.byz_seen.items() if len(provs) > 1
        }
        c.equivocations = len(equivocations)
        c.evidence_detected = len(equivocations & self.evidence_keys)
        for qc in self.chain.values():
            if self.deployed.get(qc.job_id, qc.provider) != qc.provider:
                c.deploy_without_qc += 1
        return c


def run_scenario(scenario: Scenario, jobs: int, seed: int) -> dict:
    started = time.perf_counter()
    c = Simulation(scenario, jobs, seed).run()
    # Liveness is required in every scenario: every job assigned on chain (and within the
    # round bound where the scenario has one). ``stalled_jobs`` are the undecided ones.
    liveness = c.undecided + c.over_round_bound
    return {
        "name": scenario.name,
        "checkers": scenario.n,
        "byzantine": len(scenario.byzantine),
        "behaviours": sorted(set(scenario.byzantine.values())),
        "crashed": len(scenario.crashed) + len(scenario.crash_at),
        "restarted": len(scenario.restart),
        "drop": scenario.drop,
        "jobs": c.jobs,
        "assigned": c.assigned,
        "rounds_run": c.rounds_run,
        "max_rounds_to_assign": c.max_rounds_to_assign,
        "round_bound": scenario.round_bound,
        "messages": c.messages,
        "dropped": c.dropped,
        "rejected_messages": c.rejected,
        "equivocating_proposals": c.equivocating_proposals,
        "conflicting_qcs": c.conflicting_qcs,
        "qc_below_quorum": c.qc_below_quorum,
        "deploy_without_qc": c.deploy_without_qc,
        "evidence_against_honest": c.evidence_against_honest,
        "equivocations": c.equivocations,
        "evidence_detected": c.evidence_detected,
        "safety_violations": c.safety_violations,
        "liveness_failures": liveness,
        "stalled_jobs": c.undecided,
        "evidence_missed": c.equivocations - c.evidence_detected,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_all(rounds: int, seed: int, scenarios: list[Scenario] | None = None) -> dict:
    """The report of ``kaisar sim consensus``: ``rounds`` jobs per scenario."""
    results = [run_scenario(s, rounds, seed) for s in (scenarios or default_scenarios())]
    return {
        "rounds": rounds,
        "seed": seed,
        "scenarios": results,
        "safety_violations": sum(r["safety_violations"] for r in results),
        "liveness_failures": sum(r["liveness_failures"] for r in results),
        "stalled_jobs": sum(r["stalled_jobs"] for r in results),
        "evidence_missed": sum(r["evidence_missed"] for r in results),
        "timeout_base_s": SIM_TIMEOUT_BASE,
        "round_timeout_max_factor": rules.ROUND_TIMEOUT_MAX_FACTOR,
    }
