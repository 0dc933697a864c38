"""The consensus rules against the real contracts (embedded chain): the off-chain QC
rule agrees with Staking.quorum_signers on every signer subset, machine-built QCs are
accepted by the escrow, and EvidencePool's evidence slashes through Staking."""

from __future__ import annotations

from itertools import combinations

import pytest
from web3.logs import DISCARD

from node.consensus import votes
from node.consensus.checkers import make_checker_set
from node.consensus.evidence import EvidencePool
from node.consensus.machine import AssignmentMachine, Broadcast, Decided, Send
from node.consensus.qc import (
    AssignQC,
    is_valid_assign_qc,
    sign_assign_vote,
    sign_popw_vote,
)
from node.consensus.scheduler import JobSpec, ProviderInfo
from node.eip712 import Domain

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import GPU  # noqa: E402

pytest_plugins = ["chain_fixtures"]


def chain_checker_set(world):
    addresses, stakes = world.h.call(world.staking.functions.active_checkers())
    return make_checker_set(zip(addresses, stakes, strict=True))


def contract_accepts(world, job_id, round_, provider, sigs) -> bool:
    struct_hash = votes.ASSIGN_VOTE.hash_struct(
        {"jobId": job_id, "round": round_, "provider": provider}
    )
    try:
        world.h.call(world.staking.functions.quorum_signers(struct_hash, list(sigs)))
    except Exception:
        return False
    return True


def test_qc_rule_agrees_with_the_contract(world):
    checkers = chain_checker_set(world)
    domain = world.dep.domain
    provider = world.providers[0].address
    cases = []
    for k in range(len(world.checkers) + 1):
        for who in combinations(world.checkers, k):
            cases.append(tuple(world.assign_sigs(7, 1, provider, who)))
    one = world.assign_sigs(7, 1, provider, world.checkers[:1])[0]
    cases.append(tuple(world.assign_sigs(7, 1, provider, world.checkers[:2])) + (one,))
    cases.append(tuple(world.assign_sigs(7, 1, provider, world.checkers, Domain(1))))
    cases.append(tuple(world.assign_sigs(7, 1, provider, [world.outsider, *world.checkers[:2]])))
    verdicts = []
    for sigs in cases:
        ours = is_valid_assign_qc(domain, checkers, AssignQC(7, 1, provider, sigs))
        assert ours == contract_accepts(world, 7, 1, provider, sigs), sigs
        verdicts.append(ours)
    assert True in verdicts and False in verdicts


def test_machine_qc_is_accepted_by_the_escrow(world):
    checkers = chain_checker_set(world)
    domain = world.dep.domain
    job_id = world.create_job()
    spec = JobSpec(job_id, "cpu", 1, max_price=10**13)
    providers = [ProviderInfo(p.address, "cpu", 1, 10**12, 0) for p in world.providers]
    ms = [AssignmentMachine(c, domain, checkers) for c in world.checkers]
    by_addr = {m.address: k for k, m in enumerate(ms)}
    queue = [(k, m.on_job(spec, providers, 0)) for k, m in enumerate(ms)]
    qcs = []
    while queue:  # Broadcasts to every other machine, Sends (votes) to their addressee
        k, outs = queue.pop(0)
        for o in outs:
            if isinstance(o, Decided):
                qcs.append(o.qc)
            elif isinstance(o, Broadcast):
                queue += [(j, m.on_message(o.message)) for j, m in enumerate(ms) if j != k]
            elif isinstance(o, Send):
                j = by_addr[o.to]
                queue.append((j, ms[j].on_message(o.message)))
    assert qcs and len({q.provider for q in qcs}) == 1
    qc = qcs[0]
    world.h.tx(
        world.outsider,
        world.escrow.functions.assign(job_id, qc.round, qc.provider, list(qc.signatures)),
    )
    assert qc.provider in world.job(job_id)


def test_evidence_slashes_on_chain(world):
    domain = world.dep.domain
    cheat, other = world.checkers[0], world.checkers[1]
    p0, p1 = world.providers[0].address, world.providers[1].address
    pool = EvidencePool()
    assert pool.add_assign(sign_assign_vote(cheat, domain, 5, 2, p0)) is None
    ev = pool.add_assign(sign_assign_vote(cheat, domain, 5, 2, p1))
    fn, args = ev.slash_call()
    r = world.h.tx(world.outsider, getattr(world.staking.functions, fn)(*args))
    slashed = world.staking.events.Slashed().process_receipt(r, errors=DISCARD)[0]["args"]
    assert (slashed["node_key"], slashed["kind"]) == (cheat.address, 1)

    assert pool.add_popw(sign_popw_vote(other, domain, 3, p0, votes.VERDICT_PASS, GPU)) is None
    ev = pool.add_popw(sign_popw_vote(other, domain, 3, p0, votes.VERDICT_FAIL, GPU))
    fn, args = ev.slash_call()
    r = world.h.tx(world.outsider, getattr(world.staking.functions, fn)(*args))
    slashed = world.staking.events.Slashed().process_receipt(r, errors=DISCARD)[0]["args"]
    assert (slashed["node_key"], slashed["kind"]) == (other.address, 2)
