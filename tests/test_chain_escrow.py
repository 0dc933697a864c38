"""Job escrow: create, assign by quorum certificate, pay pro rata, close, fail, expire."""

import pytest
from web3.logs import DISCARD

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import GPU, PARAMS, reverts  # noqa: E402

pytest_plugins = ["chain_fixtures"]
PRICE = 10**12
ZERO = "0x" + "00" * 20

# Job tuple fields (Escrow.vy struct Job)
OWNER, STATE, ROUND, PROVIDER, STARTED, REMAINING, PAID_UNTIL, DEPOSIT, FAILURES = (
    0, 8, 9, 10, 11, 12, 13, 14, 16,
)  # fmt: skip


def test_create_job_records_and_emits(world):
    E, h = world.escrow, world.h
    r = h.tx(
        world.owner,
        E.functions.create_job(b"\x22" * 32, GPU, 2, "img:1", 9000, 100, PRICE),
        value=100 * PRICE,
    )
    ev = E.events.JobCreated().process_receipt(r, errors=DISCARD)[0]["args"]
    assert ev["owner"] == world.owner.address and ev["image"] == "img:1" and ev["port"] == 9000
    assert (ev["count"], ev["duration"], ev["price"], ev["gpu_class"]) == (2, 100, PRICE, GPU)
    job = world.job(ev["job_id"])
    assert job[OWNER] == world.owner.address and job[STATE] == 1 and job[DEPOSIT] == 100 * PRICE
    assert h.call(E.functions.job_count()) == ev["job_id"]
    assert h.balance(world.dep.escrow) == 100 * PRICE
    assert h.call(E.functions.STAKING()) == world.dep.staking
    assert h.call(E.functions.ASSIGN_TIMEOUT()) == PARAMS.assign_timeout
    assert h.call(E.functions.MIN_REASSIGN()) == PARAMS.min_reassign


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        (dict(count=0), "count is zero"),
        (dict(image=""), "empty image"),
        (dict(port=0), "bad port"),
        (dict(port=65536), "bad port"),
    ],
)
def test_create_job_bad_fields(world, kw, reason):
    with reverts(reason):
        world.create_job(**kw)


def test_create_job_bad_payment(world):
    E, h = world.escrow, world.h
    with reverts("duration is zero"):
        h.tx(world.owner, E.functions.create_job(b"\0" * 32, GPU, 1, "i", 1, 0, PRICE))
    with reverts("price is zero"):
        h.tx(world.owner, E.functions.create_job(b"\0" * 32, GPU, 1, "i", 1, 10, 0))
    with reverts("wrong payment"):
        h.tx(
            world.owner, E.functions.create_job(b"\0" * 32, GPU, 1, "i", 1, 10, PRICE), value=PRICE
        )


def test_assign_first_valid_certificate_wins(world):
    E = world.escrow
    job_id = world.create_job()
    p0, p1 = world.providers[0].address, world.providers[1].address
    r = world.assign(job_id, 0, p0)
    ev = E.events.JobAssigned().process_receipt(r, errors=DISCARD)[0]["args"]
    assert (ev["job_id"], ev["provider"], ev["round"], ev["signers"]) == (job_id, p0, 0, 2)
    job = world.job(job_id)
    assert job[STATE] == 2 and job[PROVIDER] == p0 and job[STARTED] == job[PAID_UNTIL] > 0
    with reverts("job not open"):
        world.assign(job_id, 1, p1)  # a later certificate is too late
    with reverts("job not open"):
        world.assign(999, 0, p1)


def test_assign_reverts(world):
    job_id = world.create_job()
    p0 = world.providers[0].address
    c = world.checkers
    with reverts("zero provider"):
        world.h.tx(world.outsider, world.escrow.functions.assign(job_id, 0, ZERO, []))
    with reverts("insufficient quorum"):
        world.assign(job_id, 0, p0, signers=[c[1], c[2], c[3]])
    with reverts("duplicate signer"):
        world.assign(job_id, 0, p0, signers=[c[0], c[0], c[1]])
    with reverts("unknown signer"):
        world.assign(job_id, 0, p0, signers=[c[0], c[1], world.outsider])
    # signatures for another job, round or provider do not verify
    sigs = world.assign_sigs(job_id + 1, 0, p0, c[:2])
    with reverts("unknown signer"):
        world.h.tx(world.outsider, world.escrow.functions.assign(job_id, 0, p0, sigs))
    # a failure vote is not an assignment vote
    sigs = world.failure_sigs(job_id, 0, p0, c[:2])
    with reverts("unknown signer"):
        world.h.tx(world.outsider, world.escrow.functions.assign(job_id, 0, p0, sigs))


def test_assign_with_python_digest_of_struct_hash(world):
    from node.consensus import votes

    p0 = world.providers[0].address
    got = world.h.call(world.escrow.functions.assign_struct_hash(4, 1, p0))
    assert got == votes.ASSIGN_VOTE.hash_struct({"jobId": 4, "round": 1, "provider": p0})


def test_claim_pays_pro_rata(world):
    E, h = world.escrow, world.h
    job_id = world.create_job(duration=100)
    prov = world.providers[0]
    world.assign(job_id, 0, prov.address)
    start = world.job(job_id)[STARTED]
    with reverts("not the provider"):
        h.tx(world.outsider, E.functions.claim(job_id))
    world.chain.increase_time(30)
    before = h.balance(prov.address)
    r = h.tx(prov, E.functions.claim(job_id))
    served = h.w3.eth.get_block(r["blockNumber"])["timestamp"] - start
    assert 0 < served < 100
    paid = E.events.ProviderPaid().process_receipt(r, errors=DISCARD)[0]["args"]["amount"]
    assert paid == served * PRICE
    assert h.balance(prov.address) == before + paid - h.fee(r)
    assert world.job(job_id)[DEPOSIT] == (100 - served) * PRICE
    world.chain.increase_time(500)  # far past the end: capped at the duration
    assert h.call(E.functions.earned(job_id)) == (100 - served) * PRICE
    h.tx(prov, E.functions.claim(job_id))
    assert world.job(job_id)[DEPOSIT] == 0
    with reverts("nothing to claim"):
        h.tx(prov, E.functions.claim(job_id))
    assert h.call(E.functions.earned(999)) == 0


def test_claim_reverts_when_not_running(world):
    job_id = world.create_job()
    with reverts("job not running"):
        world.h.tx(world.providers[0], world.escrow.functions.claim(job_id))


def test_close_open_job_refunds_everything(world):
    E, h = world.escrow, world.h
    job_id = world.create_job(duration=50)
    with reverts("not job owner"):
        h.tx(world.outsider, E.functions.close(job_id))
    before = h.balance(world.owner.address)
    r = h.tx(world.owner, E.functions.close(job_id))
    assert h.balance(world.owner.address) == before + 50 * PRICE - h.fee(r)
    ev = E.events.JobClosed().process_receipt(r, errors=DISCARD)[0]["args"]
    assert (ev["state"], ev["provider_paid"], ev["refund"]) == (3, 0, 50 * PRICE)
    with reverts("job finished"):
        h.tx(world.owner, E.functions.close(job_id))


def test_close_running_job_splits(world):
    E, h = world.escrow, world.h
    prov = world.providers[0]
    job_id = world.create_job(duration=100)
    world.assign(job_id, 0, prov.address)
    start = world.job(job_id)[STARTED]
    world.chain.increase_time(40)
    before = h.balance(world.owner.address)
    r = h.tx(world.owner, E.functions.close(job_id))
    served = h.w3.eth.get_block(r["blockNumber"])["timestamp"] - start
    ev = E.events.JobClosed().process_receipt(r, errors=DISCARD)[0]["args"]
    assert ev["provider_paid"] == served * PRICE and ev["refund"] == (100 - served) * PRICE
    assert h.balance(world.owner.address) == before + ev["refund"] - h.fee(r)
    assert h.call(E.functions.balances(prov.address)) == served * PRICE
    before = h.balance(prov.address)
    r = h.tx(prov, E.functions.withdraw())
    assert h.balance(prov.address) == before + served * PRICE - h.fee(r)
    with reverts("nothing to withdraw"):
        h.tx(prov, E.functions.withdraw())
    assert h.balance(world.dep.escrow) == 0


def test_extend(world):
    E, h = world.escrow, world.h
    job_id = world.create_job(duration=100)
    with reverts("not job owner"):
        h.tx(world.outsider, E.functions.extend(job_id, 10), value=10 * PRICE)
    with reverts("zero seconds"):
        h.tx(world.owner, E.functions.extend(job_id, 0))
    with reverts("wrong payment"):
        h.tx(world.owner, E.functions.extend(job_id, 10), value=PRICE)
    r = h.tx(world.owner, E.functions.extend(job_id, 10), value=10 * PRICE)
    assert E.events.JobExtended().process_receipt(r, errors=DISCARD)[0]["args"]["seconds"] == 10
    job = world.job(job_id)
    assert job[REMAINING] == 110 and job[DEPOSIT] == 110 * PRICE
    world.assign(job_id)
    h.tx(world.owner, E.functions.extend(job_id, 5), value=5 * PRICE)
    world.chain.increase_time(200)
    with reverts("job already ended"):
        h.tx(world.owner, E.functions.extend(job_id, 5), value=5 * PRICE)
    h.tx(world.outsider, E.functions.expire(job_id))
    with reverts("job finished"):
        h.tx(world.owner, E.functions.extend(job_id, 5), value=5 * PRICE)


def test_fail_reassigns_then_refunds(world):
    E, h = world.escrow, world.h
    p0, p1 = world.providers[0].address, world.providers[1].address
    job_id = world.create_job(duration=1000)
    world.assign(job_id, 0, p0)
    world.chain.increase_time(10)
    sigs = world.failure_sigs(job_id, 0, p0, world.checkers[:2])
    r = h.tx(world.outsider, E.functions.fail(job_id, 0, p0, sigs))
    ev = E.events.JobReassigned().process_receipt(r, errors=DISCARD)[0]["args"]
    assert ev["failed_provider"] == p0 and ev["round"] == 1
    job = world.job(job_id)
    served = 1000 - ev["remaining"]
    assert job[STATE] == 1 and job[ROUND] == 1 and job[PROVIDER] == ZERO and job[FAILURES] == 1
    assert h.call(E.functions.balances(p0)) == served * PRICE
    # the failed round's certificate cannot be replayed
    with reverts("stale round"):
        world.assign(job_id, 0, p1)
    for rnd in (1, 2, 3):
        world.assign(job_id, rnd, p1)
        sigs = world.failure_sigs(job_id, rnd, p1, world.checkers[:2])
        r = h.tx(world.outsider, E.functions.fail(job_id, rnd, p1, sigs))
    # the third reassignment was the last: the fourth failure refunds
    ev = E.events.JobClosed().process_receipt(r, errors=DISCARD)[0]["args"]
    assert ev["state"] == 5
    job = world.job(job_id)
    assert job[STATE] == 5 and job[DEPOSIT] == 0 and job[FAILURES] == 4
    owed = h.call(E.functions.balances(world.owner.address))
    assert owed == ev["refund"] > 0
    total = owed + h.call(E.functions.balances(p0)) + h.call(E.functions.balances(p1))
    assert total == 1000 * PRICE  # nothing lost, nothing created


def test_fail_too_close_to_the_end_refunds_instead_of_reassigning(world):
    """A failure certified with less than MIN_REASSIGN seconds of paid time left ends the
    job: the provider is paid for the time it served, the owner gets the rest back, and
    nothing is reopened that no provider could serve in time (soak job 67: reassigned with
    12 s left, never served again). At exactly MIN_REASSIGN left it is still reassigned."""
    E, h = world.escrow, world.h
    p0 = world.providers[0].address
    duration, keep = 200, PARAMS.min_reassign
    # exactly MIN_REASSIGN left at the failure: reassigned
    job_a = world.create_job(duration=duration)
    world.assign(job_a, 0, p0)
    start = world.job(job_a)[STARTED]
    sigs = world.failure_sigs(job_a, 0, p0, world.checkers[:2])
    fail_at = start + duration - keep
    world.chain.increase_time(fail_at - h.now() - 1)  # the next block is mined at fail_at
    r = h.tx(world.outsider, E.functions.fail(job_a, 0, p0, sigs))
    ev = E.events.JobReassigned().process_receipt(r, errors=DISCARD)[0]["args"]
    assert ev["remaining"] == keep and world.job(job_a)[STATE] == 1
    # one second less: FAILED, served time paid, the rest refunded
    job_b = world.create_job(duration=duration)
    world.assign(job_b, 0, p0)
    start = world.job(job_b)[STARTED]
    paid_before = h.call(E.functions.balances(p0))
    sigs = world.failure_sigs(job_b, 0, p0, world.checkers[:2])
    fail_at = start + duration - keep + 1
    world.chain.increase_time(fail_at - h.now() - 1)
    r = h.tx(world.outsider, E.functions.fail(job_b, 0, p0, sigs))
    assert not E.events.JobReassigned().process_receipt(r, errors=DISCARD)
    ev = E.events.JobClosed().process_receipt(r, errors=DISCARD)[0]["args"]
    served = duration - keep + 1
    assert (ev["state"], ev["provider_paid"], ev["refund"]) == (
        5, served * PRICE, (keep - 1) * PRICE,
    )  # fmt: skip
    job = world.job(job_b)
    assert job[STATE] == 5 and job[DEPOSIT] == 0 and job[FAILURES] == 1
    assert h.call(E.functions.balances(p0)) - paid_before == served * PRICE
    assert h.call(E.functions.balances(world.owner.address)) == (keep - 1) * PRICE
    with reverts("job not open"):
        world.assign(job_b, 1, p0)


def test_fail_reverts(world):
    E, h = world.escrow, world.h
    p0, p1 = world.providers[0].address, world.providers[1].address
    job_id = world.create_job()
    sigs = world.failure_sigs(job_id, 0, p0, world.checkers[:2])
    with reverts("job not running"):
        h.tx(world.outsider, E.functions.fail(job_id, 0, p0, sigs))
    world.assign(job_id, 0, p0)
    with reverts("not the current assignment"):
        h.tx(world.outsider, E.functions.fail(job_id, 1, p0, sigs))
    with reverts("not the current assignment"):
        h.tx(world.outsider, E.functions.fail(job_id, 0, p1, sigs))
    weak = world.failure_sigs(job_id, 0, p0, world.checkers[2:])
    with reverts("insufficient quorum"):
        h.tx(world.outsider, E.functions.fail(job_id, 0, p0, weak))
    assign_sigs = world.assign_sigs(job_id, 0, p0, world.checkers[:2])
    with reverts("unknown signer"):
        h.tx(world.outsider, E.functions.fail(job_id, 0, p0, assign_sigs))


def test_fail_after_end_is_refused_the_job_ran_its_course(world):
    """A failure certificate that lands after the paid time is over has nothing left to
    reassign or refund: it reverts, and the job ends DONE (the provider paid to the end,
    which is what a FAILED ending would have paid it). Before, such a job was relabelled
    FAILED with a zero refund (soak: a served job's provider killed in its last seconds)."""
    E, h = world.escrow, world.h
    p0 = world.providers[0].address
    job_id = world.create_job(duration=10)
    world.assign(job_id, 0, p0)
    world.chain.increase_time(50)
    sigs = world.failure_sigs(job_id, 0, p0, world.checkers[:2])
    with reverts("job already ended"):
        h.tx(world.outsider, E.functions.fail(job_id, 0, p0, sigs))
    r = h.tx(world.outsider, E.functions.expire(job_id))
    ev = E.events.JobClosed().process_receipt(r, errors=DISCARD)[0]["args"]
    assert (ev["state"], ev["provider_paid"], ev["refund"]) == (4, 10 * PRICE, 0)


def test_expire_open_and_done(world):
    E, h = world.escrow, world.h
    job_id = world.create_job(duration=100)
    with reverts("assignment window open"):
        h.tx(world.outsider, E.functions.expire(job_id))
    world.chain.increase_time(PARAMS.assign_timeout)
    r = h.tx(world.outsider, E.functions.expire(job_id))
    ev = E.events.JobClosed().process_receipt(r, errors=DISCARD)[0]["args"]
    assert (ev["state"], ev["refund"]) == (6, 100 * PRICE)
    assert h.call(E.functions.balances(world.owner.address)) == 100 * PRICE
    with reverts("job finished"):
        h.tx(world.outsider, E.functions.expire(job_id))
    job2 = world.create_job(duration=100)
    world.assign(job2)
    with reverts("job still running"):
        h.tx(world.outsider, E.functions.expire(job2))
    world.chain.increase_time(100)
    r = h.tx(world.outsider, E.functions.expire(job2))
    ev = E.events.JobClosed().process_receipt(r, errors=DISCARD)[0]["args"]
    assert (ev["state"], ev["provider_paid"], ev["refund"]) == (4, 100 * PRICE, 0)
    assert h.call(E.functions.balances(world.providers[0].address)) == 100 * PRICE
    with reverts("job finished"):
        h.tx(world.outsider, E.functions.expire(999))


# reentrancy ---------------------------------------------------------------------------


def test_reentrant_owner_cannot_double_refund(world):
    E, h = world.escrow, world.h
    attacker = h.deploy(world.outsider, "test_Attacker")
    A = h.contract("test_Attacker", attacker)
    create = E.functions.create_job(
        b"\0" * 32, GPU, 1, "i", 80, 100, PRICE
    )._encode_transaction_data()
    h.tx(world.outsider, A.functions.call(world.dep.escrow, create), value=100 * PRICE)
    job_id = h.call(E.functions.job_count())
    assert world.job(job_id)[OWNER] == attacker
    other = world.create_job(duration=100)  # other users' money sits in the escrow too
    close = E.functions.close(job_id)._encode_transaction_data()
    h.tx(world.outsider, A.functions.arm(world.dep.escrow, close))
    h.tx(world.outsider, A.functions.call(world.dep.escrow, close))
    assert h.call(A.functions.attempted())
    assert not h.call(A.functions.reentered_ok())  # lock + checks-effects-interactions
    assert h.call(A.functions.received()) == 100 * PRICE
    assert h.balance(world.dep.escrow) == world.job(other)[DEPOSIT] == 100 * PRICE


def test_reentrant_provider_cannot_double_claim(world):
    E, h = world.escrow, world.h
    attacker = h.deploy(world.outsider, "test_Attacker")
    A = h.contract("test_Attacker", attacker)
    job_id = world.create_job(duration=100)
    world.assign(job_id, 0, attacker)
    world.chain.increase_time(20)
    claim = E.functions.claim(job_id)._encode_transaction_data()
    h.tx(world.outsider, A.functions.arm(world.dep.escrow, claim))
    h.tx(world.outsider, A.functions.call(world.dep.escrow, claim))
    assert h.call(A.functions.attempted()) and not h.call(A.functions.reentered_ok())
    assert h.call(A.functions.received()) + world.job(job_id)[DEPOSIT] == 100 * PRICE


def test_reentrant_withdraw_blocked(world):
    E, h = world.escrow, world.h
    attacker = h.deploy(world.outsider, "test_Attacker")
    A = h.contract("test_Attacker", attacker)
    job_id = world.create_job(duration=100)
    world.assign(job_id, 0, attacker)
    world.chain.increase_time(200)
    h.tx(world.outsider, E.functions.expire(job_id))
    wd = E.functions.withdraw()._encode_transaction_data()
    h.tx(world.outsider, A.functions.arm(world.dep.escrow, wd))
    h.tx(world.outsider, A.functions.call(world.dep.escrow, wd))
    assert h.call(A.functions.attempted()) and not h.call(A.functions.reentered_ok())
    assert h.call(A.functions.received()) == 100 * PRICE
