"""Byzantine checkers for the simulation: each breaks one rule on purpose.

They hold real checker keys and stake and sign with them; they see every message an
honest node sees and may send anything to anyone. None can sign for another key: a
"forged" signature is random bytes or another key's signature.

The base class follows the two-step protocol (prevote to the leader, precommit on a
PrepareQC; as leader, collect both and gossip the certificates); each behaviour
overrides the step it attacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.consensus import assignment as rules
from node.consensus.checkers import CheckerSet
from node.consensus.qc import (
    AssignQC,
    InvalidVote,
    PrepareQC,
    Proposal,
    SignedAssignVote,
    SignedPrevote,
    build_assign_qc,
    build_prepare_qc,
    is_valid_assign_vote,
    sign_assign_vote,
    sign_prevote,
    verify_prepare_qc,
    verify_prevote,
    verify_proposal,
)
from node.consensus.scheduler import JobSpec, ProviderInfo, eligible_providers
from node.eip712 import Domain
from node.identity import Identity

if TYPE_CHECKING:
    from node.consensus.sim import Simulation

MAX_REPLAYS_PER_PROPOSAL = 4


class ByzantineChecker:
    """Base: keeps rounds like an honest node (own timers), votes for what it is shown."""

    def __init__(
        self,
        identity: Identity,
        domain: Domain,
        checkers: CheckerSet,
        sim: Simulation,
        foreign_domain: Domain,
    ) -> None:
        self.identity, self.domain, self.checkers, self.sim = identity, domain, checkers, sim
        self.address = identity.address
        self.foreign_domain = foreign_domain
        self.index = [i.address for i in sim.ids].index(identity.address)
        self.specs: dict[int, JobSpec] = {}
        self.providers: tuple[ProviderInfo, ...] = ()
        self.rounds: dict[int, int] = {}
        self.seen: list[SignedAssignVote | SignedPrevote] = []
        self.prevotes: dict[tuple[int, int, str], dict[str, bytes]] = {}
        self.precommits: dict[tuple[int, int, str], dict[str, bytes]] = {}
        # (job, round, provider): a Byzantine leader may form polkas for several providers
        self.prepared: set[tuple[int, int, str]] = set()
        self.certified: set[tuple[int, int, str]] = set()

    # driven by the simulation like an AssignmentMachine ---------------------------

    def on_job(self, spec: JobSpec, providers, epoch: int) -> list:
        self.specs[spec.job_id] = spec
        self.providers = tuple(providers)
        self._enter(spec.job_id, 0)
        return []

    def on_timeout(self, job_id: int, round_: int) -> list:
        if self.rounds.get(job_id) == round_ and job_id not in self.sim.chain:
            self._enter(job_id, round_ + 1)
        return []

    def on_propose_timeout(self, job_id: int, round_: int) -> list:
        return []

    def receive(self, src: int, msg: object) -> None:
        try:
            if isinstance(msg, Proposal):
                if not rules.is_proposal(self.checkers, msg.job_id, msg.round, msg.prevote.signer):
                    return
                verify_proposal(self.domain, self.checkers, msg)
                self.seen.append(msg.prevote)
                self.on_proposal(msg)
            elif isinstance(msg, SignedPrevote):
                verify_prevote(self.domain, self.checkers, msg)
                self.seen.append(msg)
                self.collect_prevote(msg)
            elif isinstance(msg, PrepareQC):
                verify_prepare_qc(self.domain, self.checkers, msg)
                self.on_prepare(msg)
            elif isinstance(msg, SignedAssignVote):
                if is_valid_assign_vote(self.domain, self.checkers, msg):
                    self.seen.append(msg)
                    self.collect_precommit(msg)
        except (InvalidVote, ValueError):
            return

    # helpers -------------------------------------------------------------------

    def _enter(self, job_id: int, round_: int) -> None:
        self.rounds[job_id] = round_
        delay = rules.round_timeout(round_, self.sim_timeout_base)
        self.sim.at(self.sim.now + delay, ("timeout", self.index, job_id, round_))
        if self.leader(job_id, round_) == self.address:
            self.lead(job_id, round_)

    @property
    def sim_timeout_base(self) -> float:
        from node.consensus.sim import SIM_TIMEOUT_BASE

        return SIM_TIMEOUT_BASE

    def leader(self, job_id: int, round_: int) -> str:
        return rules.get_leader(self.checkers, job_id, round_)

    def eligible(self, job_id: int) -> list[str]:
        spec = self.specs.get(job_id)
        if spec is None:
            return []
        return [p.address for p in eligible_providers(spec, self.providers, 0)]

    def prevote(self, job_id: int, round_: int, provider: str) -> SignedPrevote:
        return sign_prevote(self.identity, self.domain, job_id, round_, provider)

    def precommit(self, job_id: int, round_: int, provider: str) -> SignedAssignVote:
        return sign_assign_vote(self.identity, self.domain, job_id, round_, provider)

    def honest(self) -> list[int]:
        return [i for i in range(len(self.sim.ids)) if i not in self.sim.sc.byzantine]

    def send_to_all(self, msg: object) -> None:
        self.sim.broadcast(self.index, msg)

    def send_to(self, address: str, msg: object) -> None:
        dst = self.sim.index[address]
        if dst == self.index:
            self.receive(self.index, msg)
        else:
            self.sim.send(self.index, dst, msg)

    def collect_prevote(self, vote: SignedPrevote) -> None:
        key = (vote.job_id, vote.round, vote.provider)
        self.prevotes.setdefault(key, {})[vote.signer] = vote.signature
        if self.leader(vote.job_id, vote.round) != self.address:
            return
        if key in self.prepared:
            return
        qc = build_prepare_qc(self.domain, self.checkers, *key, self.prevotes[key])
        if qc is not None:
            self.prepared.add(key)
            self.on_prepared(qc)

    def collect_precommit(self, vote: SignedAssignVote) -> None:
        key = (vote.job_id, vote.round, vote.provider)
        self.precommits.setdefault(key, {})[vote.signer] = vote.signature
        if key in self.certified:
            return
        qc = build_assign_qc(self.domain, self.checkers, *key, self.precommits[key])
        if qc is not None:
            self.certified.add(key)
            self.on_certified(qc)

    # behaviour hooks (default: an honest-looking leader and voter) -----------------

    def lead(self, job_id: int, round_: int) -> None:
        choices = self.eligible(job_id)
        if choices:
            vote = self.prevote(job_id, round_, choices[0])
            self.send_to_all(Proposal(vote))
            self.collect_prevote(vote)

    def on_proposal(self, proposal: Proposal) -> None:
        vote = self.prevote(proposal.job_id, proposal.round, proposal.provider)
        self.send_to(proposal.prevote.signer, vote)

    def on_prepared(self, qc: PrepareQC) -> None:
        """As leader: a polka formed from the prevotes sent to us."""
        self.send_to_all(qc)
        self.on_prepare(qc)

    def on_prepare(self, qc: PrepareQC) -> None:
        vote = self.precommit(qc.job_id, qc.round, qc.provider)
        self.send_to(self.leader(qc.job_id, qc.round), vote)

    def on_certified(self, qc: AssignQC) -> None:
        """An AssignQC formed from the precommits sent to us."""
        self.send_to_all(qc)
        self.sim.to_provider_and_chain(qc)


class EquivocatingLeader(ByzantineChecker):
    """As leader, proposes a different provider to each group of honest checkers, and
    shows any polka it gets to a random part of them only (splitting honest locks)."""

    def lead(self, job_id: int, round_: int) -> None:
        choices = self.eligible(job_id)[:3]
        if not choices:
            return
        honest = self.honest()
        self.sim.rng.shuffle(honest)
        for k, dst in enumerate(honest):
            p = choices[k % len(choices)]
            self.sim.send(self.index, dst, Proposal(self.prevote(job_id, round_, p)))
        for dst in self.sim.sc.byzantine:  # fellow Byzantines get every variant
            for p in choices:
                vote = self.prevote(job_id, round_, p)
                if dst == self.index:
                    self.collect_prevote(vote)
                else:
                    self.sim.send(self.index, dst, Proposal(vote))

    def on_prepared(self, qc: PrepareQC) -> None:
        honest = self.honest()
        rng = self.sim.rng
        for dst in rng.sample(honest, rng.randint(1, len(honest))):
            self.sim.send(self.index, dst, qc)
        self.on_prepare(qc)

    def on_proposal(self, proposal: Proposal) -> None:
        # Prevotes every proposal variant it sees (itself an equivocation when split).
        self.send_to(
            proposal.prevote.signer,
            self.prevote(proposal.job_id, proposal.round, proposal.provider),
        )


class EquivocatingVoter(ByzantineChecker):
    """Prevotes the proposal and a rival; on a polka, precommits it to half the honest
    checkers and a rival provider to the other half (a slashable equivocation)."""

    def on_proposal(self, proposal: Proposal) -> None:
        super().on_proposal(proposal)
        rivals = [p for p in self.eligible(proposal.job_id) if p != proposal.provider]
        if rivals:
            fake = self.prevote(proposal.job_id, proposal.round, rivals[0])
            self.send_to(proposal.prevote.signer, fake)

    def on_prepare(self, qc: PrepareQC) -> None:
        rivals = [p for p in self.eligible(qc.job_id) if p != qc.provider]
        real = self.precommit(qc.job_id, qc.round, qc.provider)
        if not rivals:
            self.send_to(self.leader(qc.job_id, qc.round), real)
            return
        fake = self.precommit(qc.job_id, qc.round, rivals[0])
        for k, dst in enumerate(self.honest()):
            self.sim.send(self.index, dst, real if k % 2 else fake)
        self.send_to(self.leader(qc.job_id, qc.round), real)


class Forger(ByzantineChecker):
    """Sends votes, proposals and certificates whose signatures are not what they claim."""

    def on_proposal(self, proposal: Proposal) -> None:
        super().on_proposal(proposal)
        job, rnd = proposal.job_id, proposal.round
        rivals = [p for p in self.eligible(job) if p != proposal.provider]
        if not rivals:
            return
        rival = rivals[0]
        leader = proposal.prevote.signer
        victim = self.checkers.addresses[(self.index + 1) % len(self.checkers)]
        outsiders = [Identity.from_hex("0x" + f"{k + 1:064x}") for k in range(len(self.checkers))]
        rng = self.sim.rng
        forged_votes: list[object] = [
            # random bytes claiming an honest checker's precommit / prevote
            SignedAssignVote(job, rnd, rival, victim, rng.randbytes(65)),
            SignedPrevote(job, rnd, rival, victim, rng.randbytes(65)),
            # an outsider's real signature claiming to be the honest checker
            SignedAssignVote(
                job,
                rnd,
                rival,
                victim,
                sign_assign_vote(outsiders[0], self.domain, job, rnd, rival).signature,
            ),
            # own prevote signature relabelled as a precommit, and with the rival provider
            SignedAssignVote(job, rnd, proposal.provider, self.address, proposal.prevote.signature),
            SignedPrevote(
                job, rnd, rival, self.address, self.prevote(job, rnd, proposal.provider).signature
            ),
            # the leader's proposal relabelled with the rival provider
            Proposal(SignedPrevote(job, rnd, rival, leader, proposal.prevote.signature)),
        ]
        for v in forged_votes:
            self.send_to_all(v)
        own = self.precommit(job, rnd, rival).signature
        outsider_sigs = tuple(
            sign_assign_vote(o, self.domain, job, rnd, rival).signature for o in outsiders[1:]
        )
        fake_qcs = [
            # own signature plus outsiders' (unknown signers)
            AssignQC(job, rnd, rival, (own, *outsider_sigs)),
            # own signature repeated (duplicate signer)
            AssignQC(job, rnd, rival, (own,) * len(self.checkers)),
            # random bytes
            AssignQC(job, rnd, rival, tuple(rng.randbytes(65) for _ in self.checkers.addresses)),
        ]
        for qc in fake_qcs:
            self.send_to_all(qc)
            self.sim.to_provider_and_chain(qc)
        own_pre = self.prevote(job, rnd + 1, rival).signature
        self.send_to_all(PrepareQC(job, rnd + 1, rival, (own_pre,) * len(self.checkers)))
        self.send_to_all(
            # a proposal "justified" by a fake polka
            Proposal(
                self.prevote(job, rnd + 1, rival),
                PrepareQC(job, rnd, rival, (own_pre,) * len(self.checkers)),
            )
        )


class Replayer(ByzantineChecker):
    """Replays real signatures in the wrong place: other job, round, provider, kind or domain."""

    def on_proposal(self, proposal: Proposal) -> None:
        super().on_proposal(proposal)
        job, rnd = proposal.job_id, proposal.round
        rivals = [p for p in self.eligible(job) if p != proposal.provider]
        old = [v for v in self.seen[-40:] if v.job_id != job][-MAX_REPLAYS_PER_PROPOSAL:]
        leader = proposal.prevote.signer
        for v in old:
            cls = type(v)
            self.send_to_all(cls(job, rnd, v.provider, v.signer, v.signature))
            self.send_to_all(cls(v.job_id, v.round + 1, v.provider, v.signer, v.signature))
            self.send_to_all(v)  # a stale but valid vote: harmless, must be ignored by the rules
        # The leader's prevote signature replayed as its precommit (another struct kind)
        p = proposal.prevote
        self.send_to_all(SignedAssignVote(p.job_id, p.round, p.provider, p.signer, p.signature))
        if rivals:
            # A signature an honest checker made on another network (the foreign domain)
            # for the rival provider, replayed here.
            victim = self.sim.ids[self.honest()[0]]
            foreign = sign_assign_vote(victim, self.foreign_domain, job, rnd, rivals[0])
            self.send_to_all(foreign)
            self.send_to(leader, sign_prevote(victim, self.foreign_domain, job, rnd, rivals[0]))
            qc_sigs = tuple(
                sign_assign_vote(
                    self.sim.ids[i], self.foreign_domain, job, rnd, rivals[0]
                ).signature
                for i in self.honest()
            )
            fake = AssignQC(job, rnd, rivals[0], qc_sigs)
            self.send_to_all(fake)
            self.sim.to_provider_and_chain(fake)
        for qc in list(self.sim.chain.values())[-2:]:  # a real QC of another job, relabelled
            if qc.job_id != job:
                relabelled = AssignQC(job, qc.round, qc.provider, qc.signatures)
                self.send_to_all(relabelled)
                self.sim.to_provider_and_chain(relabelled)
                # ...and its precommit signatures offered as a polka
                self.send_to_all(PrepareQC(qc.job_id, qc.round, qc.provider, qc.signatures))


class Withholder(ByzantineChecker):
    """Never sends anything (it still signs, and keeps what it signed)."""

    def lead(self, job_id: int, round_: int) -> None:
        choices = self.eligible(job_id)
        if choices:
            self.prevote(job_id, round_, choices[0])

    def on_proposal(self, proposal: Proposal) -> None:
        self.prevote(proposal.job_id, proposal.round, proposal.provider)

    def on_prepare(self, qc: PrepareQC) -> None:
        self.precommit(qc.job_id, qc.round, qc.provider)


class LockBreaker(ByzantineChecker):
    """Hides a QC, then leads a later round to a rival provider.

    As leader it proposes the *last* eligible provider A, shows the polka to honest
    checkers, collects their precommits into a secret AssignQC and keeps it; when it
    leads again it proposes a rival B and hands the secret QC for A to the chain. As a
    voter it precommits only to fellow Byzantines. With ``Scenario.adversary`` the
    network slows honest-to-honest votes, so honest leaders do not finish first. Honest
    checkers locked on A refuse B (the prevote rule); without that rule they would sign
    B and the job would have two QCs (tests/test_consensus_sim.py).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.secret: dict[int, AssignQC] = {}
        self.revealed: set[int] = set()

    def on_prepare(self, qc: PrepareQC) -> None:
        vote = self.precommit(qc.job_id, qc.round, qc.provider)
        for dst in self.sim.sc.byzantine:  # withheld from honest checkers
            if dst == self.index:
                self.collect_precommit(vote)
            else:
                self.sim.send(self.index, dst, vote)

    def on_certified(self, qc: AssignQC) -> None:
        self.secret.setdefault(qc.job_id, qc)  # kept secret

    def lead(self, job_id: int, round_: int) -> None:
        choices = self.eligible(job_id)
        if not choices:
            return
        secret = self.secret.get(job_id)
        if secret is None:
            vote = self.prevote(job_id, round_, choices[-1])
            self.send_to_all(Proposal(vote))
            self.collect_prevote(vote)
            return
        rivals = [p for p in choices if p != secret.provider]
        if rivals:
            vote = self.prevote(job_id, round_, rivals[0])
            self.send_to_all(Proposal(vote))
            self.collect_prevote(vote)
        if job_id not in self.revealed:
            self.revealed.add(job_id)
            self.sim.to_provider_and_chain(secret)


BEHAVIOURS: dict[str, type[ByzantineChecker]] = {
    "lock-breaker": LockBreaker,
    "equivocating-leader": EquivocatingLeader,
    "equivocating-voter": EquivocatingVoter,
    "forger": Forger,
    "replayer": Replayer,
    "withholder": Withholder,
}
