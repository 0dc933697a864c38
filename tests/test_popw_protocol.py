"""`/kaisar/popw/1` over in-memory FramedStreams: honest, busy, late, cheating, bad peers,
and decoders that raise only PopwError on anything."""

import random

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.p2p.frames import FrameError, memory_pair
from node.popw import protocol
from node.popw.challenge import PROTOCOL_ID, Challenge, PopwError, new_challenge
from node.popw.prover import Prover
from node.popw.testing import LazyProver, ReplayProver, WrongValueProver
from node.popw.verifier import BUSY, FAIL, LATE, PASS

GENEROUS = 60.0


async def exchange(prover, ch, *, busy=None, clock=None, k=16, seed=0):
    """Run responder and checker against each other; return (verdict, responder error)."""
    checker_end, provider_end = memory_pair()
    errors = []

    async def provider():
        try:
            await protocol.respond_popw(provider_end, prover, busy=busy, open_timeout=5.0)
        except (PopwError, FrameError) as exc:
            errors.append(exc)
        finally:
            await provider_end.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(provider)
        verdict = await protocol.run_challenge(
            checker_end, ch, k=k, rng=random.Random(seed), clock=clock
        )
        await checker_end.close()
    return verdict, errors


def test_protocol_id():
    assert PROTOCOL_ID == "/kaisar/popw/1" and protocol.PROTOCOL_ID == PROTOCOL_ID


async def test_honest_provider_passes():
    prover = Prover()
    for seed in range(5):
        ch = new_challenge(32, 3, GENEROUS)
        verdict, errors = await exchange(prover, ch, seed=seed)
        assert verdict.status == PASS and not errors, verdict
        assert verdict.tflops > 0 and verdict.challenge_id == ch.id


async def test_busy_provider_gets_a_busy_verdict():
    seen = []

    def busy(ch: Challenge) -> float:
        seen.append(ch.id)
        return 30.0

    ch = new_challenge(32, 3, GENEROUS)
    verdict, errors = await exchange(Prover(), ch, busy=busy)
    assert verdict.status == BUSY and verdict.retry_after == 30.0 and seen == [ch.id] and not errors
    assert verdict.as_dict()["status"] == "busy" and not verdict.passed
    not_busy, _ = await exchange(Prover(), new_challenge(32, 3, GENEROUS), busy=lambda ch: None)
    assert not_busy.status == PASS


async def test_late_commit_by_the_checker_clock():
    ticks = iter(range(0, 1000, 100))  # each reading of the checker's clock is 100 s later
    # sent at 0, commit read at 200 (after one reading to size the wait): 200 s > 150 s
    verdict, _ = await exchange(
        Prover(), new_challenge(32, 3, 150.0), clock=lambda: float(next(ticks))
    )
    assert verdict.status == LATE and verdict.elapsed == 200.0 and "deadline" in verdict.reason


async def test_no_commit_before_the_cutoff_is_late(autojump_clock):
    checker_end, provider_end = memory_pair()
    ch = new_challenge(32, 3, 2.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(provider_end.recv)  # reads the challenge, never answers
        verdict = await protocol.run_challenge(checker_end, ch)
        nursery.cancel_scope.cancel()
    assert verdict.status == LATE and "no commit" in verdict.reason


@pytest.mark.parametrize("prover", [WrongValueProver(), LazyProver()])
async def test_cheaters_fail_over_the_protocol(prover):
    verdict, _ = await exchange(prover, new_challenge(32, 3, GENEROUS))
    assert verdict.status == FAIL


async def test_replay_fails_over_the_protocol():
    prover = ReplayProver()
    assert (await exchange(prover, new_challenge(32, 3, GENEROUS)))[0].status == PASS
    verdict, _ = await exchange(prover, new_challenge(32, 3, GENEROUS))
    assert verdict.status == FAIL and "another challenge id" in verdict.reason


async def scripted_peer(frames_to_send, ch=None):
    """A provider that replies with fixed frames whatever it receives."""
    checker_end, provider_end = memory_pair()
    ch = ch or new_challenge(32, 3, GENEROUS)

    async def peer():
        for f in frames_to_send:
            try:
                await provider_end.recv(timeout=5.0)
            except FrameError:
                return
            await provider_end.send(f)
        await provider_end.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer)
        verdict = await protocol.run_challenge(checker_end, ch)
    return verdict


@pytest.mark.parametrize(
    "frames",
    [
        [None],
        [{"t": "commit"}],
        [{"t": "commit", "id": b"x", "roots": [], "elapsed": 1.0, "device": {}}],
        [{"t": "busy", "id": b"\x00" * 32, "retry_after": 1.0}],
        [[1, 2, 3]],
        [{"t": "commit", "id": b"i" * 32, "roots": [b"r" * 32] * 3, "elapsed": -1.0, "device": {}}],
        [],
    ],
)
async def test_bad_provider_frames_fail_without_raising(frames):
    verdict = await scripted_peer(frames)
    assert verdict.status == FAIL, verdict


async def test_bad_proofs_frame_fails():
    ch = new_challenge(32, 3, GENEROUS)
    commit = Prover().commit(ch)
    verdict = await scripted_peer(
        [protocol.encode_commit(commit), {"t": "proofs", "id": ch.id, "openings": "x"}], ch
    )
    assert verdict.status == FAIL and "openings" in verdict.reason


async def test_responder_rejects_a_bad_challenge_without_computing():
    checker_end, provider_end = memory_pair()
    await checker_end.send({"t": "challenge", "id": b"i" * 32})
    with pytest.raises(PopwError):
        await protocol.respond_popw(provider_end, Prover())


async def test_responder_refuses_challenges_above_its_limits():
    checker_end, provider_end = memory_pair()
    ch = new_challenge(4096, 1024, GENEROUS)  # 16 GiB of kept rows
    await checker_end.send(protocol.encode_challenge(ch))
    with pytest.raises(PopwError, match="memory"):
        await protocol.respond_popw(provider_end, Prover())


async def test_responder_rejects_open_for_another_challenge():
    checker_end, provider_end = memory_pair()
    ch = new_challenge(32, 3, GENEROUS)
    async with trio.open_nursery() as nursery:
        await checker_end.send(protocol.encode_challenge(ch))

        async def provider():
            with pytest.raises(PopwError, match="another challenge"):
                await protocol.respond_popw(provider_end, Prover())

        nursery.start_soon(provider)
        await checker_end.recv(max_size=1 << 20)
        await checker_end.send(protocol.encode_open(b"z" * 32, [(1, 0)]))


# decoders: anything at all raises only PopwError -----------------------------

CH = Challenge(b"i" * 32, b"s" * 32, 32, 4, 2, 5.0)

leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True), st.binary(max_size=40), st.text(max_size=12),
)  # fmt: skip
objects = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
keys = ["t", "id", "seed", "n", "rounds", "stride", "deadline", "roots", "elapsed", "device",
        "retry_after", "openings", "c", "j", "prev", "prev_proof", "cur", "proof"]  # fmt: skip
near_valid = st.dictionaries(
    st.sampled_from(keys),
    st.one_of(leaf, st.sampled_from(["challenge", "commit", "busy", "open", "proofs", b"i" * 32]),
              st.lists(st.one_of(leaf, st.just(b"r" * 32)), max_size=4)),
    max_size=8,
)  # fmt: skip

DECODERS = [
    protocol.decode_challenge,
    lambda o: protocol.decode_reply(o, CH),
    lambda o: protocol.decode_open(o, CH),
    lambda o: protocol.decode_proofs(o, CH),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=st.one_of(objects, near_valid))
def test_decoders_raise_only_popw_error(obj):
    for decode in DECODERS:
        try:
            decode(obj)
        except PopwError:
            pass


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data):
    from node.p2p.frames import unpack

    try:
        obj = unpack(data)
    except FrameError:
        return
    for decode in DECODERS:
        try:
            decode(obj)
        except PopwError:
            pass


def test_encoders_round_trip():
    ch = new_challenge(32, 4, 5.0, stride=2)
    assert protocol.decode_challenge(protocol.encode_challenge(ch)) == ch
    prover = Prover()
    commit = prover.commit(ch)
    assert protocol.decode_reply(protocol.encode_commit(commit), ch) == commit
    assert protocol.decode_reply(protocol.encode_busy(ch.id, 3.0), ch) == 3.0
    reqs = [(1, 0), (2, 31)]
    assert protocol.decode_open(protocol.encode_open(ch.id, reqs), ch) == reqs
    ops = prover.open(ch.id, reqs)
    assert protocol.decode_proofs(protocol.encode_proofs(ch.id, ops), ch) == ops


async def test_concurrent_challenges_one_answers_one_is_busy():
    prover = Prover()
    verdicts = []

    async def one(seed):
        verdict, _ = await exchange(prover, new_challenge(128, 6, GENEROUS), seed=seed)
        verdicts.append(verdict.status)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 1)
        nursery.start_soon(one, 2)
    assert sorted(verdicts) == [BUSY, PASS]
    verdict, _ = await exchange(prover, new_challenge(32, 2, GENEROUS))  # released afterwards
    assert verdict.status == PASS


async def test_serve_popw_stream_never_raises_and_closes():
    checker_end, provider_end = memory_pair()
    await checker_end.send({"t": "nonsense"})
    assert await protocol.serve_popw_stream(provider_end, Prover()) is False
    with pytest.raises(FrameError):  # the provider closed its end
        await checker_end.recv(timeout=1.0)

    checker_end, provider_end = memory_pair()
    async with trio.open_nursery() as nursery:
        done = []

        async def serve():
            done.append(await protocol.serve_popw_stream(provider_end, Prover()))

        nursery.start_soon(serve)
        verdict = await protocol.run_challenge(checker_end, new_challenge(32, 2, GENEROUS))
    assert verdict.status == PASS and done == [True]
