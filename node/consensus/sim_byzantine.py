"""Byzantine checkers for the simulation: each breaks one rule on purpose.

They hold real checker keys and stake and sign with them; they see every message an
honest node sees and may send anything to anyone. None can sign for another key: a
"forged" signature is random bytes or another key's signature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.consensus import assignment as rules
from node.consensus.checkers import CheckerSet
from node.consensus.qc import (
    AssignQC,
    SignedAssignVote,
    build_assign_qc,
    is_valid_assign_vote,
    sign_assign_vote,
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
        self.foreign_domain = foreign_domain
        self.index = [i.address for i in sim.ids].index(identity.address)
        self.specs: dict[int, JobSpec] = {}
        self.providers: tuple[ProviderInfo, ...] = ()
        self.rounds: dict[int, int] = {}
        self.seen: list[SignedAssignVote] = []

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

    def receive(self, src: int, msg: object) -> None:
        if not isinstance(msg, SignedAssignVote):
            return
        if not is_valid_assign_vote(self.domain, self.checkers, msg):
            return
        self.seen.append(msg)
        if rules.is_proposal(self.checkers, msg.job_id, msg.round, msg.signer):
            self.on_proposal(msg)

    # helpers -------------------------------------------------------------------

    def _enter(self, job_id: int, round_: int) -> None:
        self.rounds[job_id] = round_
        delay = rules.round_timeout(round_, self.sim_timeout_base)
        self.sim.at(self.sim.now + delay, ("timeout", self.index, job_id, round_))
        if rules.get_leader(self.checkers, job_id, round_) == self.identity.address:
            self.lead(job_id, round_)

    @property
    def sim_timeout_base(self) -> float:
        from node.consensus.sim import SIM_TIMEOUT_BASE

        return SIM_TIMEOUT_BASE

    def eligible(self, job_id: int) -> list[str]:
        spec = self.specs.get(job_id)
        if spec is None:
            return []
        return [p.address for p in eligible_providers(spec, self.providers, 0)]

    def sign(self, job_id: int, round_: int, provider: str) -> SignedAssignVote:
        return sign_assign_vote(self.identity, self.domain, job_id, round_, provider)

    def honest(self) -> list[int]:
        return [i for i in range(len(self.sim.ids)) if i not in self.sim.sc.byzantine]

    def send_to_all(self, msg: object) -> None:
        self.sim.broadcast(self.index, msg)

    # behaviour hooks (default: an honest-looking leader and voter) -----------------

    def lead(self, job_id: int, round_: int) -> None:
        choices = self.eligible(job_id)
        if choices:
            self.send_to_all(self.sign(job_id, round_, choices[0]))

    def on_proposal(self, proposal: SignedAssignVote) -> None:
        self.send_to_all(self.sign(proposal.job_id, proposal.round, proposal.provider))


class EquivocatingLeader(ByzantineChecker):
    """As leader, proposes a different provider to each group of honest checkers."""

    def lead(self, job_id: int, round_: int) -> None:
        choices = self.eligible(job_id)[:3]
        if not choices:
            return
        honest = self.honest()
        self.sim.rng.shuffle(honest)
        for k, dst in enumerate(honest):
            self.sim.send(self.index, dst, self.sign(job_id, round_, choices[k % len(choices)]))
        for dst in self.sim.sc.byzantine:  # fellow Byzantines get every variant
            for p in choices:
                self.sim.send(self.index, dst, self.sign(job_id, round_, p))

    def on_proposal(self, proposal: SignedAssignVote) -> None:
        # Votes for every proposal variant it sees (itself an equivocation when split).
        self.send_to_all(self.sign(proposal.job_id, proposal.round, proposal.provider))


class EquivocatingVoter(ByzantineChecker):
    """Signs the proposal and a rival provider in the same round, one to each half."""

    def on_proposal(self, proposal: SignedAssignVote) -> None:
        rivals = [p for p in self.eligible(proposal.job_id) if p != proposal.provider]
        real = self.sign(proposal.job_id, proposal.round, proposal.provider)
        if not rivals:
            self.send_to_all(real)
            return
        fake = self.sign(proposal.job_id, proposal.round, rivals[0])
        honest = self.honest()
        for k, dst in enumerate(honest):
            self.sim.send(self.index, dst, real if k % 2 else fake)


class Forger(ByzantineChecker):
    """Sends votes and QCs with signatures that are not what they claim."""

    def on_proposal(self, proposal: SignedAssignVote) -> None:
        super().on_proposal(proposal)
        job, rnd = proposal.job_id, proposal.round
        rivals = [p for p in self.eligible(job) if p != proposal.provider]
        if not rivals:
            return
        rival = rivals[0]
        victim = self.checkers.addresses[(self.index + 1) % len(self.checkers)]
        outsiders = [Identity.from_hex("0x" + f"{k + 1:064x}") for k in range(len(self.checkers))]
        rng = self.sim.rng
        forged = [
            # random bytes claiming an honest checker's signature
            SignedAssignVote(job, rnd, rival, victim, rng.randbytes(65)),
            # an outsider's real signature claiming to be the honest checker
            SignedAssignVote(
                job,
                rnd,
                rival,
                victim,
                sign_assign_vote(outsiders[0], self.domain, job, rnd, rival).signature,
            ),
            # own signature over the proposal, relabelled with the rival provider
            SignedAssignVote(
                job,
                rnd,
                rival,
                self.identity.address,
                self.sign(job, rnd, proposal.provider).signature,
            ),
        ]
        for v in forged:
            self.send_to_all(v)
        own = self.sign(job, rnd, rival).signature
        fake_qcs = [
            # own signature plus outsiders' (unknown signers)
            AssignQC(
                job,
                rnd,
                rival,
                (own,)
                + tuple(
                    sign_assign_vote(o, self.domain, job, rnd, rival).signature
                    for o in outsiders[1:]
                ),
            ),
            # own signature repeated (duplicate signer)
            AssignQC(job, rnd, rival, (own,) * len(self.checkers)),
            # random bytes
            AssignQC(job, rnd, rival, tuple(rng.randbytes(65) for _ in self.checkers.addresses)),
        ]
        for qc in fake_qcs:
            self.send_to_all(qc)
            self.sim.to_provider_and_chain(qc)


class Replayer(ByzantineChecker):
    """Replays real signatures in the wrong place: other job, round, provider or domain."""

    def on_proposal(self, proposal: SignedAssignVote) -> None:
        super().on_proposal(proposal)
        job, rnd = proposal.job_id, proposal.round
        rivals = [p for p in self.eligible(job) if p != proposal.provider]
        old = [v for v in self.seen[-40:] if v.job_id != job][-MAX_REPLAYS_PER_PROPOSAL:]
        for v in old:
            self.send_to_all(SignedAssignVote(job, rnd, v.provider, v.signer, v.signature))
            self.send_to_all(
                SignedAssignVote(v.job_id, v.round + 1, v.provider, v.signer, v.signature)
            )
            self.send_to_all(v)  # a stale but valid vote: harmless, must be ignored by the rules
        if rivals:
            # A signature an honest checker made on another network (the foreign domain)
            # for the rival provider, replayed here.
            victim = self.sim.ids[self.honest()[0]]
            foreign = sign_assign_vote(victim, self.foreign_domain, job, rnd, rivals[0])
            self.send_to_all(foreign)
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


class Withholder(ByzantineChecker):
    """Never sends a vote or a proposal (it still signs, and keeps what it signed)."""

    def lead(self, job_id: int, round_: int) -> None:
        choices = self.eligible(job_id)
        if choices:
            self.sign(job_id, round_, choices[0])

    def on_proposal(self, proposal: SignedAssignVote) -> None:
        self.sign(proposal.job_id, proposal.round, proposal.provider)


class LockBreaker(ByzantineChecker):
    """Hides a QC, then leads the next round to a rival provider.

    Votes only among Byzantines (withholding from honest checkers), collects honest
    votes into a secret QC for A, then as a later leader proposes B and hands the secret
    QC for A to the chain. Against the DESIGN rule alone (one vote per round, nothing
    after a *seen* QC) this yields two QCs for one job; the vote lock stops it.
    With ``Scenario.adversary`` the network helps by slowing honest-to-honest votes.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tally: dict[tuple[int, int, str], dict[str, bytes]] = {}
        self.revealed: set[int] = set()

    def receive(self, src: int, msg: object) -> None:
        if isinstance(msg, SignedAssignVote) and is_valid_assign_vote(
            self.domain, self.checkers, msg
        ):
            self.tally.setdefault((msg.job_id, msg.round, msg.provider), {})[msg.signer] = (
                msg.signature
            )
        super().receive(src, msg)

    def on_proposal(self, proposal: SignedAssignVote) -> None:
        vote = self.sign(proposal.job_id, proposal.round, proposal.provider)
        if proposal.signer in self.sim.byz_addresses:
            self.send_to_all(vote)  # help a fellow Byzantine's rival proposal
            return
        for dst in self.sim.sc.byzantine:  # withheld from honest checkers
            self.sim.send(self.index, dst, vote)
        self.receive(self.index, vote)

    def secret_qc(self, job_id: int) -> AssignQC | None:
        for (job, rnd, provider), signers in self.tally.items():
            if job != job_id:
                continue
            qc = build_assign_qc(self.domain, self.checkers, job, rnd, provider, signers)
            if qc is not None:
                return qc
        return None

    def lead(self, job_id: int, round_: int) -> None:
        secret = self.secret_qc(job_id)
        if secret is None:
            super().lead(job_id, round_)
            return
        rivals = [p for p in self.eligible(job_id) if p != secret.provider]
        if not rivals:
            return
        self.send_to_all(self.sign(job_id, round_, rivals[0]))
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
