"""Staking: registration, stake lifecycle, the quorum rule, slashing; every revert path."""

import pytest
from web3.logs import DISCARD

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import ETHER, GPU, PARAMS, STAKES, ident, reverts  # noqa: E402
from eth_utils import keccak  # noqa: E402

from node.chain.api import bind_node_key_sig  # noqa: E402
from node.consensus import votes  # noqa: E402
from node.eip712 import Domain  # noqa: E402

pytest_plugins = ["chain_fixtures"]
ZERO = "0x" + "00" * 20


def _license(world, who):
    r = world.h.tx(who, world.license.functions.buy(), value=PARAMS.license_price)
    token = world.license.events.Transfer().process_receipt(r, errors=DISCARD)[0]["args"]["tokenId"]
    world.h.tx(who, world.license.functions.approve(world.dep.staking, token))
    return token


def _struct_hash(job_id, round_, provider):
    return votes.ASSIGN_VOTE.hash_struct({"jobId": job_id, "round": round_, "provider": provider})


# the active set --------------------------------------------------------------------


def test_active_set_in_one_call(world):
    keys, stakes = world.h.call(world.staking.functions.active_checkers())
    assert dict(zip(keys, stakes, strict=True)) == {
        c.address: s for c, s in zip(world.checkers, STAKES, strict=True)
    }
    assert world.h.call(world.staking.functions.total_active_stake()) == sum(STAKES)
    assert world.h.call(world.staking.functions.checker_count()) == 4
    assert world.h.call(world.staking.functions.is_active(world.checkers[0].address))
    assert world.h.call(world.staking.functions.stake_of(world.checkers[1].address)) == STAKES[1]
    assert world.h.call(world.staking.functions.stake_of(world.outsider.address)) == 0
    c = world.h.call(world.staking.functions.checkers(world.checkers[0].address))
    assert c[0] == world.operators[0].address and c[2] is True and c[3] == STAKES[0]
    assert world.h.call(world.staking.functions.MIN_STAKE()) == PARAMS.min_stake
    assert world.h.call(world.staking.functions.LICENSE()) == world.dep.license
    assert world.h.call(world.staking.functions.UNBONDING_PERIOD()) == PARAMS.unbonding_period
    assert world.h.call(world.staking.functions.SLASH_BPS()) == PARAMS.slash_bps
    assert world.h.call(world.staking.functions.REPORTER_BPS()) == PARAMS.reporter_bps


def test_domain_separator_matches_python(world):
    sep = world.h.call(world.staking.functions.domain_separator())
    assert sep == world.dep.domain.separator()
    assert world.dep.domain == Domain(world.h.w3.eth.chain_id, world.dep.staking)


def test_python_digest_is_what_the_contract_recovers(world):
    signer = world.checkers[2]
    provider = world.providers[0].address
    sig = world.assign_sigs(7, 3, provider, [signer])[0]
    got = world.h.call(world.staking.functions.recover(_struct_hash(7, 3, provider), sig))
    assert got == signer.address
    # and the Python-side recovery agrees
    assert (
        votes.signer_of(votes.assign_digest(world.dep.domain, 7, 3, provider), sig)
        == signer.address
    )


def test_recover_rejects_malformed_and_high_s(world):
    sh = _struct_hash(1, 0, world.providers[0].address)
    sig = world.assign_sigs(1, 0, world.providers[0].address, [world.checkers[0]])[0]
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    high = r + (n - s).to_bytes(32, "big") + bytes([55 - v])  # same signer, malleated
    assert world.h.call(world.staking.functions.recover(sh, high)) == ZERO
    assert world.h.call(world.staking.functions.recover(sh, sig[:64] + b"\x05")) == ZERO
    assert world.h.call(world.staking.functions.recover(sh, sig[:64])) == ZERO


# registration and stake -------------------------------------------------------------


def _consent(world, key, operator, token):
    return bind_node_key_sig(world.dep.domain, key, operator.address, token)


def test_register_reverts(world):
    S, h = world.staking, world.h
    who = world.outsider
    token = _license(world, who)
    with reverts("zero node key"):
        h.tx(who, S.functions.register(token, ZERO, b""), value=ETHER)
    taken = world.checkers[0]
    with reverts("node key taken"):
        h.tx(who, S.functions.register(token, taken.address, _consent(world, taken, who, token)))
    k = ident("k")
    with reverts("not license owner"):
        fn = S.functions.register(token, k.address, _consent(world, k, world.owner, token))
        h.tx(world.owner, fn, value=ETHER)
    other = world.h.tx(world.owner, world.license.functions.buy(), value=PARAMS.license_price)
    t2 = world.license.events.Transfer().process_receipt(other, errors=DISCARD)[0]["args"][
        "tokenId"
    ]
    k2 = ident("k2")
    with reverts("not approved"):  # License refuses custody without approval
        h.tx(
            world.owner, S.functions.register(t2, k2.address, _consent(world, k2, world.owner, t2))
        )
    new = ident("newkey")
    key = new.address
    # the node key must consent: no signature, a signature for another operator or
    # token, or a signature by someone else are all refused
    for bad in (
        b"",
        _consent(world, new, world.owner, token),
        _consent(world, new, who, token + 1),
        _consent(world, k, who, token),
    ):
        with reverts("node key did not consent"):
            h.tx(who, S.functions.register(token, key, bad))
    r = h.tx(who, S.functions.register(token, key, _consent(world, new, who, token)))
    assert S.events.Registered().process_receipt(r, errors=DISCARD)[0]["args"]["token_id"] == token
    assert h.call(world.license.functions.ownerOf(token)) == world.dep.staking
    assert not h.call(S.functions.is_active(key))  # no stake yet: registered, inactive
    with reverts("already registered"):
        h.tx(who, S.functions.register(token, key, _consent(world, new, who, token)))


def test_node_key_may_register_itself(world):
    S, h = world.staking, world.h
    me = world.owner  # operator and node key are the same account: no signature needed
    token = _license(world, me)
    h.tx(me, S.functions.register(token, me.address, b""), value=ETHER)
    assert h.call(S.functions.is_active(me.address))


def test_stake_activates_and_unstake_deactivates(world):
    S, h, who = world.staking, world.h, world.outsider
    new = ident("newkey")
    key = new.address
    token = _license(world, who)
    h.tx(who, S.functions.register(token, key, _consent(world, new, who, token)), value=ETHER // 2)
    assert not h.call(S.functions.is_active(key))
    with reverts("zero stake"):
        h.tx(who, S.functions.stake(key))
    with reverts("not operator"):
        h.tx(world.owner, S.functions.stake(key), value=1)
    r = h.tx(who, S.functions.stake(key), value=ETHER // 2)
    assert S.events.Staked().process_receipt(r, errors=DISCARD)[0]["args"]["total"] == ETHER
    assert h.call(S.functions.is_active(key))
    assert h.call(S.functions.total_active_stake()) == sum(STAKES) + ETHER
    with reverts("not operator"):
        h.tx(world.owner, S.functions.unstake(key, 1))
    with reverts("zero amount"):
        h.tx(who, S.functions.unstake(key, 0))
    with reverts("more than staked"):
        h.tx(who, S.functions.unstake(key, ETHER + 1))
    h.tx(who, S.functions.unstake(key, 1))  # below the minimum: out of the set
    assert not h.call(S.functions.is_active(key))
    assert h.call(S.functions.total_active_stake()) == sum(STAKES)
    keys, _ = h.call(S.functions.active_checkers())
    assert key not in keys and len(keys) == 4


def test_withdraw_after_unbonding(world):
    S, h = world.staking, world.h
    op, key = world.operators[3], world.checkers[3].address
    with reverts("nothing unbonding"):
        h.tx(op, S.functions.withdraw(key))
    r = h.tx(op, S.functions.unstake(key, ETHER // 4))
    release = S.events.Unbonding().process_receipt(r, errors=DISCARD)[0]["args"]["release_time"]
    with reverts("not operator"):
        h.tx(world.owner, S.functions.withdraw(key))
    with reverts("still unbonding"):
        h.tx(op, S.functions.withdraw(key))
    world.chain.increase_time(PARAMS.unbonding_period)
    assert h.now() >= release - 1
    before = h.balance(op.address)
    r = h.tx(op, S.functions.withdraw(key))
    assert h.balance(op.address) == before + ETHER // 4 - h.fee(r)
    with reverts("nothing unbonding"):
        h.tx(op, S.functions.withdraw(key))


def test_unregister_returns_license_and_unbonds(world):
    S, h = world.staking, world.h
    op, key = world.operators[1], world.checkers[1].address
    token = h.call(S.functions.checkers(key))[1]
    with reverts("not operator"):
        h.tx(world.owner, S.functions.unregister(key))
    h.tx(op, S.functions.unregister(key))
    assert h.call(world.license.functions.ownerOf(token)) == op.address
    assert not h.call(S.functions.is_active(key))
    assert h.call(S.functions.total_active_stake()) == sum(STAKES) - STAKES[1]
    c = h.call(S.functions.checkers(key))
    assert (c[2], c[3], c[4]) == (False, 0, STAKES[1])
    with reverts("not registered"):
        h.tx(op, S.functions.unregister(key))
    with reverts("not registered"):
        h.tx(op, S.functions.stake(key), value=1)
    # the same operator may bring the key back with the license
    h.tx(op, world.license.functions.approve(world.dep.staking, token))
    sig = _consent(world, world.checkers[1], op, token)
    h.tx(op, S.functions.register(token, key, sig), value=ETHER)
    assert h.call(S.functions.is_active(key))


# the quorum rule (4 checkers, stakes 4/3/2/1 of 10) -------------------------------------


@pytest.mark.parametrize(
    ("idx", "ok"),
    [
        ((0, 1), True),  # 7/10
        ((0, 1, 2, 3), True),
        ((1, 2, 3), False),  # 6/10 < 2/3
        ((0, 2), False),  # 6/10
        ((0,), False),
        ((), False),
    ],
)
def test_quorum_by_stake(world, idx, ok):
    provider = world.providers[0].address
    sigs = world.assign_sigs(1, 0, provider, [world.checkers[i] for i in idx])
    fn = world.staking.functions.quorum_signers(_struct_hash(1, 0, provider), sigs)
    if ok:
        assert world.h.call(fn) == [world.checkers[i].address for i in idx]
    else:
        with reverts("insufficient quorum"):
            world.h.call(fn)


def test_quorum_rejects_duplicate_unknown_bad(world):
    provider = world.providers[0].address
    sh = _struct_hash(1, 0, provider)
    S, h = world.staking, world.h
    c = world.checkers
    dup = world.assign_sigs(1, 0, provider, [c[0], c[2], c[0]])
    with reverts("duplicate signer"):
        h.call(S.functions.quorum_signers(sh, dup))
    unknown = world.assign_sigs(1, 0, provider, [c[0], c[1], world.outsider])
    with reverts("unknown signer"):
        h.call(S.functions.quorum_signers(sh, unknown))
    bad = world.assign_sigs(1, 0, provider, [c[0], c[1]])
    bad[1] = bad[1][:64] + b"\x01"
    with reverts("bad signature"):
        h.call(S.functions.quorum_signers(sh, bad))


def test_quorum_rejects_other_chain_or_contract(world):
    provider = world.providers[0].address
    sh = _struct_hash(1, 0, provider)
    signers = world.checkers[:2]
    other_chain = Domain(world.dep.chain_id + 1, world.dep.staking)
    other_contract = Domain(world.dep.chain_id, world.dep.escrow)
    for domain in (other_chain, other_contract):
        sigs = world.assign_sigs(1, 0, provider, signers, domain=domain)
        with reverts("unknown signer"):
            world.h.call(world.staking.functions.quorum_signers(sh, sigs))


def test_no_active_checkers(world):
    S, h = world.staking, world.h
    for op, key in zip(world.operators, world.checkers, strict=True):
        h.tx(op, S.functions.unregister(key.address))
    with reverts("no active checkers"):
        h.call(S.functions.quorum_signers(_struct_hash(1, 0, world.providers[0].address), []))


# slashing ------------------------------------------------------------------------------


def test_slash_assign_equivocation(world):
    S, h = world.staking, world.h
    cheat, op = world.checkers[0], world.operators[0]
    p0, p1 = world.providers[0].address, world.providers[1].address
    a = world.assign_sigs(5, 2, p0, [cheat])[0]
    b = world.assign_sigs(5, 2, p1, [cheat])[0]
    reporter = world.outsider
    before = h.balance(reporter.address)
    r = h.tx(reporter, S.functions.slash_assign(5, 2, p0, a, p1, b))
    ev = S.events.Slashed().process_receipt(r, errors=DISCARD)[0]["args"]
    cut = STAKES[0] * PARAMS.slash_bps // 10000
    reward = cut * PARAMS.reporter_bps // 10000
    assert (ev["node_key"], ev["kind"], ev["amount"], ev["reward"]) == (
        cheat.address,
        1,
        cut,
        reward,
    )
    assert h.balance(reporter.address) == before + reward - h.fee(r)
    assert not h.call(S.functions.is_active(cheat.address))
    assert h.call(S.functions.total_active_stake()) == sum(STAKES) - STAKES[0]
    c = h.call(S.functions.checkers(cheat.address))
    assert (c[2], c[3], c[4]) == (False, 0, STAKES[0] - cut)
    assert h.call(world.license.functions.ownerOf(c[1])) == op.address
    assert h.call(S.functions.slashed_total()) == cut - reward
    evidence = keccak(
        b"".join(x.to_bytes(32, "big") for x in (1, 5, 2))
        + bytes(12)
        + bytes.fromhex(cheat.address[2:])
    )
    assert h.call(S.functions.evidence_used(evidence))
    with reverts("evidence already used"):
        h.tx(reporter, S.functions.slash_assign(5, 2, p1, b, p0, a))
    # its signatures no longer count for quorums
    sigs = world.assign_sigs(9, 0, p0, [cheat, world.checkers[1]])
    with reverts("unknown signer"):
        h.call(S.functions.quorum_signers(_struct_hash(9, 0, p0), sigs))


def test_slash_assign_reverts(world):
    S, h = world.staking, world.h
    c0, c1 = world.checkers[0], world.checkers[1]
    p0, p1 = world.providers[0].address, world.providers[1].address
    a = world.assign_sigs(5, 2, p0, [c0])[0]
    with reverts("votes do not conflict"):
        h.tx(world.outsider, S.functions.slash_assign(5, 2, p0, a, p0, a))
    with reverts("different signers"):
        b1 = world.assign_sigs(5, 2, p1, [c1])[0]
        h.tx(world.outsider, S.functions.slash_assign(5, 2, p0, a, p1, b1))
    with reverts("bad signature"):
        h.tx(world.outsider, S.functions.slash_assign(5, 2, p0, a, p1, a[:64] + b"\x00"))
    # a signature for another round is not a conflict: it recovers to a different key
    other_round = world.assign_sigs(5, 3, p1, [c0])[0]
    with reverts("different signers"):
        h.tx(world.outsider, S.functions.slash_assign(5, 2, p0, a, p1, other_round))
    stranger = world.outsider
    x = world.assign_sigs(5, 2, p0, [stranger])[0]
    y = world.assign_sigs(5, 2, p1, [stranger])[0]
    with reverts("signer is not a checker"):
        h.tx(world.owner, S.functions.slash_assign(5, 2, p0, x, p1, y))


def test_slash_popw_equivocation_and_unbonding_stake(world):
    S, h = world.staking, world.h
    cheat, op = world.checkers[2], world.operators[2]
    prov = world.providers[0].address
    # stake that is leaving is still at risk
    h.tx(op, S.functions.unstake(cheat.address, ETHER))
    a = world.popw_sigs(3, prov, [cheat], verdict=votes.VERDICT_PASS)[0]
    b = world.popw_sigs(3, prov, [cheat], verdict=votes.VERDICT_FAIL)[0]
    with reverts("votes do not conflict"):
        h.tx(world.outsider, S.functions.slash_popw(3, prov, 1, GPU, a, 1, GPU, a))
    r = h.tx(world.outsider, S.functions.slash_popw(3, prov, 1, GPU, a, 2, GPU, b))
    ev = S.events.Slashed().process_receipt(r, errors=DISCARD)[0]["args"]
    assert ev["kind"] == 2 and ev["amount"] == STAKES[2] * PARAMS.slash_bps // 10000
    c = h.call(S.functions.checkers(cheat.address))
    assert c[3] + c[4] == STAKES[2] - ev["amount"]
    with reverts("evidence already used"):
        h.tx(world.outsider, S.functions.slash_popw(3, prov, 1, GPU, a, 2, GPU, b))
    # a different GPU class with the same verdict is a conflict too (other checker)
    other = world.checkers[3]
    g2 = votes.gpu_class_id("a100")
    a2 = world.popw_sigs(3, prov, [other])[0]
    b2 = world.popw_sigs(3, prov, [other], gpu=g2)[0]
    with reverts("bad signature"):
        h.tx(world.outsider, S.functions.slash_popw(3, prov, 1, GPU, a2, 1, g2, b2[:64] + b"\x00"))
    with reverts("different signers"):
        h.tx(world.outsider, S.functions.slash_popw(3, prov, 1, GPU, a2, 1, g2, b))
    h.tx(world.outsider, S.functions.slash_popw(3, prov, 1, GPU, a2, 1, g2, b2))
    assert not h.call(S.functions.is_active(other.address))


def test_slash_nothing_left_and_withdraw_slashed(world):
    S, h = world.staking, world.h
    cheat, op = world.checkers[3], world.operators[3]
    prov = world.providers[0].address
    h.tx(op, S.functions.unregister(cheat.address))
    world.chain.increase_time(PARAMS.unbonding_period)
    h.tx(op, S.functions.withdraw(cheat.address))
    a = world.popw_sigs(1, prov, [cheat])[0]
    b = world.popw_sigs(1, prov, [cheat], verdict=votes.VERDICT_LATE)[0]
    with reverts("nothing to slash"):
        h.tx(world.outsider, S.functions.slash_popw(1, prov, 1, GPU, a, 3, GPU, b))
    with reverts("nothing slashed"):
        h.tx(world.admin, S.functions.withdraw_slashed(world.admin.address))
    c0 = world.checkers[0]
    a = world.popw_sigs(1, prov, [c0])[0]
    b = world.popw_sigs(1, prov, [c0], verdict=votes.VERDICT_LATE)[0]
    h.tx(world.outsider, S.functions.slash_popw(1, prov, 1, GPU, a, 3, GPU, b))
    total = h.call(S.functions.slashed_total())
    with reverts("admin only"):
        h.tx(world.owner, S.functions.withdraw_slashed(world.owner.address))
    treasury = ident("treasury").address
    h.tx(world.admin, S.functions.withdraw_slashed(treasury))
    assert h.balance(treasury) == total > 0
    assert h.call(S.functions.admin()) == world.admin.address


def test_constructor_checks(world):
    h = world.h
    with reverts("min stake is zero"):
        h.deploy(world.admin, "Staking", world.dep.license, 0, 1, 1, 1)
    with reverts("bps > 10000"):
        h.deploy(world.admin, "Staking", world.dep.license, 1, 1, 10001, 1)


def test_checker_set_is_bounded(world):
    h, admin, op = world.h, world.admin, world.outsider
    lic = h.contract("License", h.deploy(admin, "License", 0, 100))
    st = h.contract("Staking", h.deploy(admin, "Staking", lic.address, 1, 1, 5000, 0))
    h.tx(op, lic.functions.setApprovalForAll(st.address, True))
    for i in range(65):
        h.tx(admin, lic.functions.admin_mint(op.address), gas=200_000)
        k = ident(f"bounded{i}")
        sig = bind_node_key_sig(Domain(world.dep.chain_id, st.address), k, op.address, i + 1)
        fn = st.functions.register(i + 1, k.address, sig)
        if i < 64:
            h.tx(op, fn, value=1, gas=400_000)  # explicit gas: skip eth-tester's slow estimate
        else:
            with reverts("checker set full"):
                h.tx(op, fn, value=1)
    keys, stakes = h.call(st.functions.active_checkers())
    assert len(keys) == 64 and sum(stakes) == 64 == h.call(st.functions.total_active_stake())
