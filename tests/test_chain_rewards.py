"""Rewards: PoPW certificates credit once, checkers share, linear vesting, claim."""

import pytest
from web3.logs import DISCARD

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import ETHER, GPU, PARAMS, reverts  # noqa: E402

from node.consensus import votes  # noqa: E402

pytest_plugins = ["chain_fixtures"]
U = PARAMS.unlock_period
REWARD = PARAMS.reward_per_cert
SHARE = REWARD * PARAMS.checker_bps // 10000 // 2  # two signers


def _submit(world, epoch=1, provider=None, signers=None, **kw):
    provider = provider or world.providers[0].address
    signers = world.checkers[:2] if signers is None else signers
    sigs = world.popw_sigs(epoch, provider, signers, **kw)
    fn = world.rewards.functions.submit_popw(epoch, provider, kw.get("gpu", GPU), sigs)
    return world.h.tx(world.outsider, fn)


def _ts(world, receipt):
    return world.h.w3.eth.get_block(receipt["blockNumber"])["timestamp"]


def test_views_and_fund(world):
    R, h = world.rewards, world.h
    assert h.call(R.functions.pool()) == 10 * ETHER
    assert h.call(R.functions.REWARD_PER_CERT()) == REWARD
    assert h.call(R.functions.CHECKER_BPS()) == PARAMS.checker_bps
    assert h.call(R.functions.UNLOCK_PERIOD()) == U
    assert h.call(R.functions.STAKING()) == world.dep.staking
    with reverts("zero amount"):
        h.tx(world.owner, R.functions.fund())
    r = h.tx(world.owner, R.functions.fund(), value=ETHER)
    assert R.events.Funded().process_receipt(r, errors=DISCARD)[0]["args"]["amount"] == ETHER
    assert h.call(R.functions.pool()) == 11 * ETHER
    p = world.providers[0].address
    expect = votes.POPW_VOTE.hash_struct({"epoch": 3, "provider": p, "verdict": 1, "gpuClass": GPU})
    assert h.call(R.functions.popw_struct_hash(3, p, GPU)) == expect


def test_certificate_credits_provider_and_signers_once(world):
    R, h = world.rewards, world.h
    prov = world.providers[0].address
    r = _submit(world, epoch=7)
    ev = R.events.Certified().process_receipt(r, errors=DISCARD)[0]["args"]
    assert (ev["epoch"], ev["provider"], ev["signers"]) == (7, prov, 2)
    assert ev["checker_reward"] == SHARE and ev["provider_reward"] == REWARD - 2 * SHARE
    assert h.call(R.functions.points(prov)) == 1
    assert h.call(R.functions.credited(7, prov))
    assert h.call(R.functions.pool()) == 10 * ETHER - REWARD
    assert h.call(R.functions.locked(prov)) == REWARD - 2 * SHARE
    assert h.call(R.functions.locked(world.checkers[0].address)) == SHARE
    assert h.call(R.functions.locked(world.checkers[2].address)) == 0
    with reverts("already credited"):
        _submit(world, epoch=7, signers=world.checkers)
    _submit(world, epoch=8)
    assert h.call(R.functions.points(prov)) == 2


def test_submit_reverts(world):
    c = world.checkers
    with reverts("insufficient quorum"):
        _submit(world, signers=c[1:])
    with reverts("duplicate signer"):
        _submit(world, signers=[c[0], c[1], c[0]])
    with reverts("unknown signer"):
        _submit(world, signers=[c[0], c[1], world.outsider])
    with reverts("unknown signer"):  # a FAIL verdict certificate earns nothing
        _submit(world, verdict=votes.VERDICT_FAIL)
    with reverts("zero provider"):
        _submit(world, provider="0x" + "00" * 20)


def test_pool_exhausted(world):
    h, R = world.h, world.rewards
    # a fresh Rewards with an empty pool
    addr = h.deploy(world.admin, "Rewards", world.dep.staking, REWARD, 2000, U)
    R2 = h.contract("Rewards", addr)
    prov = world.providers[0].address
    sigs = world.popw_sigs(1, prov, world.checkers[:2])
    with reverts("reward pool exhausted"):
        h.tx(world.outsider, R2.functions.submit_popw(1, prov, GPU, sigs))
    h.tx(world.admin, R2.functions.fund(), value=REWARD)
    h.tx(world.outsider, R2.functions.submit_popw(1, prov, GPU, sigs))
    assert h.call(R2.functions.pool()) == 0
    assert h.call(R.functions.pool()) == 10 * ETHER
    with reverts("bps > 10000"):
        h.deploy(world.admin, "Rewards", world.dep.staking, REWARD, 10001, U)
    with reverts("unlock period is zero"):
        h.deploy(world.admin, "Rewards", world.dep.staking, REWARD, 0, 0)


def test_vesting_is_linear_with_exact_boundaries(world):
    R, h = world.rewards, world.h
    prov = world.providers[0]
    amount = REWARD - 2 * SHARE
    t0 = _ts(world, _submit(world))
    assert h.call(R.functions.claimable(prov.address)) == 0  # nothing at the credit block
    with reverts("nothing vested"):
        h.tx(world.owner, R.functions.claim())  # never credited
    world.chain.increase_time(U // 4)
    r = h.tx(prov, R.functions.claim())
    t1 = _ts(world, r)
    got1 = R.events.Claimed().process_receipt(r, errors=DISCARD)[0]["args"]["amount"]
    assert got1 == amount * (t1 - t0) // U
    world.chain.increase_time(U)  # past the end: exactly the rest, never more
    r = h.tx(prov, R.functions.claim())
    got2 = R.events.Claimed().process_receipt(r, errors=DISCARD)[0]["args"]["amount"]
    assert got1 + got2 == amount
    assert h.call(R.functions.locked(prov.address)) == 0
    world.chain.increase_time(U)
    with reverts("nothing vested"):
        h.tx(prov, R.functions.claim())


def test_vesting_one_second_before_and_at_end(world):
    R, h = world.rewards, world.h
    c0 = world.checkers[0]
    t0 = _ts(world, _submit(world))
    # move to exactly t0 + U - 1 then t0 + U (time_travel sets the next block's time)
    world.chain.tester.time_travel(t0 + U - 1)
    now = world.chain.timestamp()
    assert h.call(R.functions.claimable(c0.address)) == SHARE * (now - t0) // U
    world.chain.tester.time_travel(t0 + U + 1)
    assert h.call(R.functions.claimable(c0.address)) == SHARE


def test_second_credit_merges_schedules(world):
    R, h = world.rewards, world.h
    prov = world.providers[0]
    amount = REWARD - 2 * SHARE
    t0 = _ts(world, _submit(world, epoch=1))
    world.chain.increase_time(U // 2)
    t1 = _ts(world, _submit(world, epoch=2))
    v = h.call(R.functions.vesting(prov.address))
    vested_then = amount * (t1 - t0) // U
    locked_then = amount - vested_then
    assert v[3] == vested_then and v[0] == locked_then + amount
    assert v[2] == (locked_then * (t0 + U) + amount * (t1 + U)) // (locked_then + amount)
    world.chain.increase_time(2 * U)
    r = h.tx(prov, R.functions.claim())
    assert R.events.Claimed().process_receipt(r, errors=DISCARD)[0]["args"]["amount"] == 2 * amount


def test_reentrant_claim_blocked(world):
    R, h = world.rewards, world.h
    attacker = h.deploy(world.outsider, "test_Attacker")
    A = h.contract("test_Attacker", attacker)
    _submit(world, provider=attacker)
    world.chain.increase_time(U)
    claim = R.functions.claim()._encode_transaction_data()
    h.tx(world.outsider, A.functions.arm(world.dep.rewards, claim))
    h.tx(world.outsider, A.functions.call(world.dep.rewards, claim))
    assert h.call(A.functions.attempted()) and not h.call(A.functions.reentered_ok())
    assert h.call(A.functions.received()) == REWARD - 2 * SHARE
