"""``/kaisar/popw/1``: challenge -> commit (or busy) -> open -> proofs, over a FramedStream.

Frames (msgpack maps, exact key sets; ``t`` names the kind):

    checker  -> provider  {t: "challenge", id, seed, n, rounds, stride, deadline}
    provider -> checker   {t: "commit", id, roots, elapsed, device}  |  {t: "busy", id, retry_after}
    checker  -> provider  {t: "open", id, openings: [[commit, row], ...]}
    provider -> checker   {t: "proofs", id, openings: [{c, j, prev, prev_proof, cur, proof}, ...]}

Each frame has its own size limit and timeout (constants below, or derived from the
challenge). Decoders check types, lengths and ranges and raise only ``PopwError``;
``run_challenge`` turns every peer failure into a Verdict and never raises for one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from node.p2p.frames import FramedStream, FrameError
from node.popw import merkle
from node.popw.challenge import (
    DEFAULT_OPENINGS,
    ID_SIZE,
    MAX_COMMITS,
    MAX_OPENINGS,
    PROTOCOL_ID,
    SEED_SIZE,
    Challenge,
    PopwError,
    require,
    validate_challenge,
)
from node.popw.prover import Commitment, Opening, Prover
from node.popw.verifier import (
    BUSY,
    FAIL,
    LATE,
    Verdict,
    check_commit,
    check_openings,
    draw_openings,
    judge,
)

__all__ = [
    "PROTOCOL_ID",
    "ResponderLimits",
    "respond_popw",
    "serve_popw_stream",
    "run_challenge",
]

log = logging.getLogger(__name__)

CHALLENGE_MAX_BYTES = 512
OPEN_MAX_BYTES = 64 + MAX_OPENINGS * 16
DEVICE_MAX_FIELDS = 16
DEVICE_MAX_STR = 256
CHALLENGE_TIMEOUT = 10.0  # provider waits this long for the challenge after the stream opens
OPEN_TIMEOUT = 30.0  # provider waits this long for the open request after its commit
PROOFS_TIMEOUT = 20.0  # checker waits this long for the proofs after its open request
SEND_TIMEOUT = 10.0
# The checker stops waiting for a commit at LATE_CUTOFF_FACTOR * deadline: later is
# "late" without a commit, and the provider's work is abandoned.
LATE_CUTOFF_FACTOR = 2.0
MAX_RETRY_AFTER = 3600.0


def commit_frame_limit(ch: Challenge) -> int:
    return 1024 + DEVICE_MAX_FIELDS * 2 * (DEVICE_MAX_STR + 8) + ch.commits * (merkle.HASH_SIZE + 2)


def proofs_frame_limit(ch: Challenge, k: int) -> int:
    per = 64 + 2 * (ch.n + 5) + 2 * (ch.proof_len * (merkle.HASH_SIZE + 2) + 5)
    return 64 + k * per


# encoders ------------------------------------------------------------------


def encode_challenge(ch: Challenge) -> dict[str, Any]:
    return {
        "t": "challenge", "id": ch.id, "seed": ch.seed, "n": ch.n,
        "rounds": ch.rounds, "stride": ch.stride, "deadline": float(ch.deadline),
    }  # fmt: skip


def encode_commit(c: Commitment) -> dict[str, Any]:
    return {
        "t": "commit",
        "id": c.id,
        "roots": list(c.roots),
        "elapsed": float(c.elapsed),
        "device": dict(c.device),
    }


def encode_busy(challenge_id: bytes, retry_after: float) -> dict[str, Any]:
    return {"t": "busy", "id": challenge_id, "retry_after": float(retry_after)}


def encode_open(challenge_id: bytes, requests: list[tuple[int, int]]) -> dict[str, Any]:
    return {"t": "open", "id": challenge_id, "openings": [[c, j] for c, j in requests]}


def encode_proofs(challenge_id: bytes, openings: list[Opening]) -> dict[str, Any]:
    return {
        "t": "proofs",
        "id": challenge_id,
        "openings": [
            {"c": o.commit, "j": o.row, "prev": o.prev, "prev_proof": list(o.prev_proof),
             "cur": o.cur, "proof": list(o.proof)}
            for o in openings
        ],
    }  # fmt: skip


# strict field readers --------------------------------------------------------


def _map(obj: Any, kind: str, keys: set[str]) -> dict[str, Any]:
    require(isinstance(obj, dict), f"{kind}: frame is not a map")
    require(obj.get("t") == kind, f"expected a {kind!r} frame")
    require(set(obj) == keys | {"t"}, f"{kind}: wrong fields")
    return obj


def _bytes(
    obj: dict[str, Any], key: str, size: int | None = None, max_size: int | None = None
) -> bytes:
    v = obj[key]
    require(isinstance(v, bytes), f"{key}: expected bytes")
    require(size is None or len(v) == size, f"{key}: expected {size} bytes")
    require(max_size is None or len(v) <= max_size, f"{key}: too long")
    return v


def _int(obj: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = obj[key]
    require(isinstance(v, int) and not isinstance(v, bool), f"{key}: expected an integer")
    require(lo <= v <= hi, f"{key}: {v} out of range")
    return v


def _float(obj: dict[str, Any], key: str, lo: float, hi: float) -> float:
    v = obj[key]
    require(isinstance(v, int | float) and not isinstance(v, bool), f"{key}: expected a number")
    require(lo <= v <= hi, f"{key}: out of range")  # also false for NaN; no float() of huge ints
    return float(v)


def _hash_list(v: Any, key: str, max_len: int) -> list[bytes]:
    require(isinstance(v, list) and len(v) <= max_len, f"{key}: expected a list of hashes")
    require(
        all(isinstance(h, bytes) and len(h) == merkle.HASH_SIZE for h in v),
        f"{key}: malformed hash",
    )
    return list(v)


# decoders --------------------------------------------------------------------


def decode_challenge(obj: Any) -> Challenge:
    m = _map(obj, "challenge", {"id", "seed", "n", "rounds", "stride", "deadline"})
    ch = Challenge(
        id=_bytes(m, "id", ID_SIZE),
        seed=_bytes(m, "seed", SEED_SIZE),
        n=_int(m, "n", 0, 1 << 30),
        rounds=_int(m, "rounds", 0, 1 << 30),
        stride=_int(m, "stride", 0, 1 << 30),
        deadline=_float(m, "deadline", 0.0, 1e9),
    )
    validate_challenge(ch)
    return ch


def decode_reply(obj: Any, ch: Challenge) -> Commitment | float:
    """A commit for ``ch``, or the retry_after of a busy reply."""
    require(isinstance(obj, dict), "reply: frame is not a map")
    if obj.get("t") == "busy":
        m = _map(obj, "busy", {"id", "retry_after"})
        require(_bytes(m, "id", ID_SIZE) == ch.id, "busy reply for another challenge id")
        return _float(m, "retry_after", 0.0, MAX_RETRY_AFTER)
    m = _map(obj, "commit", {"id", "roots", "elapsed", "device"})
    device = m["device"]
    require(
        isinstance(device, dict) and len(device) <= DEVICE_MAX_FIELDS,
        "device: expected a small map",
    )
    for k, v in device.items():
        require(isinstance(k, str) and len(k) <= DEVICE_MAX_STR, "device: bad key")
        require(
            (isinstance(v, str) and len(v) <= DEVICE_MAX_STR)
            or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1 << 63),
            "device: values are short strings or integers",
        )
    return Commitment(
        id=_bytes(m, "id", ID_SIZE),
        roots=_hash_list(m["roots"], "roots", MAX_COMMITS),
        elapsed=_float(m, "elapsed", 0.0, 1e9),
        device=dict(device),
    )


def decode_open(obj: Any, ch: Challenge) -> list[tuple[int, int]]:
    m = _map(obj, "open", {"id", "openings"})
    require(_bytes(m, "id", ID_SIZE) == ch.id, "open request for another challenge id")
    reqs = m["openings"]
    require(isinstance(reqs, list) and len(reqs) <= MAX_OPENINGS, "openings: expected a short list")
    out = []
    for r in reqs:
        require(isinstance(r, list) and len(r) == 2, "opening: expected [commit, row]")
        c, j = r
        require(
            isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= ch.commits,
            "opening: commit out of range",
        )
        require(
            isinstance(j, int) and not isinstance(j, bool) and 0 <= j < ch.n,
            "opening: row out of range",
        )
        out.append((c, j))
    return out


def decode_proofs(obj: Any, ch: Challenge) -> list[Opening]:
    m = _map(obj, "proofs", {"id", "openings"})
    require(_bytes(m, "id", ID_SIZE) == ch.id, "proofs for another challenge id")
    ops = m["openings"]
    require(isinstance(ops, list) and len(ops) <= MAX_OPENINGS, "openings: expected a short list")
    out = []
    for o in ops:
        require(
            isinstance(o, dict) and set(o) == {"c", "j", "prev", "prev_proof", "cur", "proof"},
            "opening: wrong fields",
        )
        out.append(
            Opening(
                commit=_int(o, "c", 1, ch.commits),
                row=_int(o, "j", 0, ch.n - 1),
                prev=_bytes(o, "prev", max_size=ch.n),
                prev_proof=_hash_list(o["prev_proof"], "prev_proof", ch.proof_len),
                cur=_bytes(o, "cur", ch.n),
                proof=_hash_list(o["proof"], "proof", ch.proof_len),
            )
        )
    return out


async def _send(framed: FramedStream, obj: dict[str, Any]) -> None:
    """FramedStream.send, with a peer that hung up reported as FrameError like every other
    stream failure (the transport raises its own errors: ConnectionError, trio's, libp2p's)."""
    try:
        await framed.send(obj, timeout=SEND_TIMEOUT)
    except (FrameError, trio.Cancelled):
        raise
    except Exception as exc:
        raise FrameError(f"stream closed while sending: {type(exc).__name__}") from None


# provider side ---------------------------------------------------------------


@dataclass(frozen=True)
class ResponderLimits:
    """What a provider agrees to compute for one challenge (memory for the kept steps)."""

    max_n: int = 8192
    # commits * n^2 int8 rows kept until the openings; the h100 class needs 7.1 GiB
    max_store_bytes: int = 8 << 30


BusyPolicy = Callable[[Challenge], float | None]  # None: answer; seconds: busy, retry after


async def respond_popw(
    framed: FramedStream,
    prover: Prover,
    *,
    busy: BusyPolicy | None = None,
    limits: ResponderLimits = ResponderLimits(),
    challenge_timeout: float = CHALLENGE_TIMEOUT,
    open_timeout: float = OPEN_TIMEOUT,
) -> None:
    """Answer one challenge on an open stream (the `/kaisar/popw/1` stream handler body).

    Raises PopwError or FrameError when the checker misbehaves or the stream breaks; the
    caller logs it and closes the stream in ``finally``. Compute runs in a worker thread
    so the node's event loop keeps serving other streams meanwhile. Busy replies: when
    the ``busy`` policy returns seconds, or while another exchange holds the prover.
    """
    ch = decode_challenge(
        await framed.recv(max_size=CHALLENGE_MAX_BYTES, timeout=challenge_timeout)
    )
    require(ch.n <= limits.max_n, f"n={ch.n} above this provider's limit {limits.max_n}")
    require(
        ch.commits * ch.n * ch.n <= limits.max_store_bytes,
        "challenge needs more memory than allowed",
    )
    retry_after = busy(ch) if busy is not None else None
    if retry_after is None:
        if prover.try_reserve():
            try:
                await _answer(framed, prover, ch, open_timeout)
            finally:
                prover.release()
            return
        retry_after = ch.deadline  # another checker's exchange holds the device
    await _send(framed, encode_busy(ch.id, min(max(retry_after, 0.0), MAX_RETRY_AFTER)))


async def serve_popw_stream(
    framed: FramedStream,
    prover: Prover,
    *,
    busy: BusyPolicy | None = None,
    limits: ResponderLimits = ResponderLimits(),
) -> bool:
    """The whole provider-side stream handler: answer, log a misbehaving checker, always
    close the stream. Returns True if the exchange completed. Never raises (except
    trio.Cancelled), so a bad checker cannot take down the handler's nursery."""
    try:
        await respond_popw(framed, prover, busy=busy, limits=limits)
        return True
    except (PopwError, FrameError) as exc:
        log.info("popw_exchange_dropped reason=%r", str(exc))
        return False
    finally:
        await framed.close()


async def _answer(framed: FramedStream, prover: Prover, ch: Challenge, open_timeout: float) -> None:
    commitment = await trio.to_thread.run_sync(prover.commit, ch)
    await _send(framed, encode_commit(commitment))
    requests = decode_open(await framed.recv(max_size=OPEN_MAX_BYTES, timeout=open_timeout), ch)
    openings = prover.open(ch.id, requests)
    await _send(framed, encode_proofs(ch.id, openings))


# checker side ----------------------------------------------------------------


async def run_challenge(
    framed: FramedStream,
    ch: Challenge,
    *,
    k: int = DEFAULT_OPENINGS,
    rng: random.Random | None = None,
    clock: Callable[[], float] | None = None,
    proofs_timeout: float = PROOFS_TIMEOUT,
) -> Verdict:
    """Challenge one provider on an open stream and judge it. Never raises for peer faults.

    The time that counts is the checker's own: from just before sending the challenge
    to receiving the commit (``clock``, default ``trio.current_time``). Openings are
    drawn only after the commit arrived.
    """
    validate_challenge(ch)
    require(1 <= k <= MAX_OPENINGS, "k out of range")
    now = clock or trio.current_time
    t0 = now()
    cutoff = ch.deadline * LATE_CUTOFF_FACTOR
    try:
        await _send(framed, encode_challenge(ch))
        reply = await framed.recv(
            max_size=commit_frame_limit(ch), timeout=max(cutoff - (now() - t0), 0.0)
        )
    except FrameError as exc:
        elapsed = now() - t0
        if elapsed >= cutoff:
            return Verdict(LATE, f"no commit within {cutoff:.3f}s", elapsed, 0.0, ch.id)
        return Verdict(FAIL, f"no commit: {exc}", elapsed, 0.0, ch.id)
    elapsed = now() - t0
    try:
        commit = decode_reply(reply, ch)
        if not isinstance(commit, Commitment):
            reason = f"provider busy, retry after {commit:.1f}s"
            return Verdict(BUSY, reason, elapsed, 0.0, ch.id, retry_after=commit)
        check_commit(ch, commit)
        requested = draw_openings(ch, k, rng)
        await _send(framed, encode_open(ch.id, requested))
        proofs = await framed.recv(max_size=proofs_frame_limit(ch, k), timeout=proofs_timeout)
        openings = decode_proofs(proofs, ch)
        await trio.to_thread.run_sync(check_openings, ch, commit, requested, openings)
    except (PopwError, FrameError) as exc:
        return judge(ch, elapsed, PopwError(str(exc)))
    return judge(ch, elapsed, None)
