"""Fuzzing every wire decoder: envelopes of every registered message type, the gossip
conversions to consensus votes and certificates, their verification, and frames.

Properties: ``wire.decode`` raises only ``WireError`` for any input; whatever decodes
converts to a vote/QC without error, and verifying it returns a verdict (never raises
anything but the rule's own ``InvalidVote``); ``FramedStream.recv`` raises only
``FrameError``. Counts per run: docs/FUZZING.md.
"""

from __future__ import annotations

import msgpack
import pytest
import trio
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from node import wire
from node.consensus import qc as qcmod
from node.consensus.checkers import make_checker_set
from node.eip712 import Domain
from node.explorer.indexer import load_message_types
from node.identity import Identity
from node.p2p.frames import LEN, FramedStream, FrameError, memory_pair, unpack
from node.roles.checker import messages as cm
from node.roles.provider import messages as pm

load_message_types()  # every role's message types are registered
DOMAIN = Domain(1337)
NET = "devnet"
SIGNER = Identity.generate()
CHECKERS = [Identity.generate() for _ in range(4)]
CHECKER_SET = make_checker_set((c.address, 10) for c in CHECKERS)
TYPES = sorted(wire.REGISTRY)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**300)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=80)
)
anything = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=25,
)


def _bounds(bits: int, signed: bool) -> st.SearchStrategy[int]:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return st.sampled_from([lo, hi, lo - 1, hi + 1, 0, 1]) | st.integers(lo, hi)


def field_value(f: wire.Field) -> st.SearchStrategy:
    """Values near the field's schema: valid ones, boundary ones, and wrong types."""
    k = f.kind
    if k in ("uint", "int"):
        near = _bounds(f.bits, k == "int")
    elif k == "bool":
        near = st.booleans() | st.sampled_from([0, 1])
    elif k == "str":
        near = (
            st.sampled_from(sorted(wire.ROLES | pm.STATES) + ["", "x" * f.max_len, "é" * f.max_len])
            | st.text(max_size=f.max_len + 4)
        )
    elif k in ("bytes", "address", "bytes32"):
        size = f.exact_len or {"address": 20, "bytes32": 32}.get(k, f.max_len)
        near = st.binary(min_size=size, max_size=size) | st.binary(max_size=size + 2)
    elif k == "list":
        item = (
            st.binary(min_size=65, max_size=65)
            | st.text(max_size=300).map(lambda s: "/" + s)
            | st.sampled_from(["/ip4/1.2.3.4/tcp/1", "/ip4/999.1.1.1/tcp/99999", "/dns4/../p2p/x"])
            | anything
        )
        near = st.lists(item, max_size=f.max_len + 2)
    else:  # map: the ProviderAd inventory shape, plus anything
        gpu = st.dictionaries(
            st.sampled_from(["index", "name", "uuid", "memory_mb", "other"]), scalars, max_size=5
        )
        near = st.fixed_dictionaries(
            {},
            optional={
                "gpus": st.lists(gpu, max_size=4) | anything,
                "driver": st.text(max_size=40),
                "cpu_count": st.integers(-5, 2**70),
            },
        )
    return near | anything if k not in ("map", "list") else near | scalars


@st.composite
def bodies(draw, type_name: str | None = None):
    name = type_name or draw(st.sampled_from(TYPES))
    mtype = wire.REGISTRY[name]
    now = wire.now_ms()
    body = {
        "network": draw(st.sampled_from([NET, "other", ""]) | st.text(max_size=70)),
        "issued": draw(st.sampled_from([now, now + 10**6, 0, 2**64]) | st.integers(-1, 2**65)),
        "expiry": draw(st.sampled_from([now + 1000, now - 1, 2**64 - 1]) | st.integers(-1, 2**65)),
        "seq": draw(_bounds(64, False)),
    }
    for f in mtype.fields:
        body[f.name] = draw(field_value(f))
    if draw(st.booleans()):  # drop or add a field
        body.pop(draw(st.sampled_from(sorted(body))))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=8))] = draw(scalars)
    return name, body


def _valid_body(name: str, data) -> dict:
    """A body that passes the schema (drawn until one does, or the type's example)."""
    now = wire.now_ms()
    mtype = wire.REGISTRY[name]
    fields = {}
    for f in mtype.fields:
        fields[f.name] = data.draw(field_value(f).filter(lambda v, f=f: _ok(f, v)), label=f.name)
    return {"network": NET, "issued": now, "expiry": now + 1000, "seq": 1, **fields}


def _ok(f: wire.Field, v) -> bool:
    try:
        f.validate(v)
    except wire.WireError:
        return False
    return True


def _pack(obj) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return None


def _convert(env: wire.Envelope) -> None:
    """What a checker does with a decoded consensus message: convert, then verify."""
    t = env.type
    if t == "AssignVoteMsg":
        assert qcmod.is_valid_assign_vote(DOMAIN, CHECKER_SET, cm.assign_vote_from(env)) in (True, False)
    elif t == "AssignQCMsg":
        assert qcmod.is_valid_assign_qc(DOMAIN, CHECKER_SET, cm.assign_qc_from(env)) in (True, False)
    elif t == "PopwAttest":
        vote = cm.popw_vote_from(env)
        try:
            qcmod.verify_popw_vote(DOMAIN, CHECKER_SET, vote, env.body["epoch"])
        except qcmod.InvalidVote:
            pass
    elif t == "PopwQCMsg":
        qc = cm.popw_qc_from(env)
        assert qcmod.is_valid_popw_qc(DOMAIN, CHECKER_SET, qc, env.body["epoch"]) in (True, False)


# envelopes -------------------------------------------------------------------------


@fuzz(150)
@given(bodies(), st.binary(min_size=20, max_size=20), st.binary(min_size=65, max_size=65))
def test_any_body_of_any_type_only_raises_wire_error(tb, signer, sig):
    name, body = tb
    data = _pack({"v": 1, "type": name, "body": body, "signer": signer, "sig": sig})
    if data is None:
        return
    with pytest.raises(wire.WireError):  # a random signature never matches
        wire.decode(data, domain=DOMAIN, network=NET)


@fuzz(150)
@given(bodies())
def test_signed_bodies_round_trip_or_are_refused_by_schema(tb):
    """Signing checks the schema; whatever signs also decodes to the same content, and
    converts to consensus objects without error (what the checker's handlers do)."""
    name, body = tb
    header = {k: body.pop(k) for k in ("network", "issued", "expiry", "seq") if k in body}
    try:
        env = wire.sign(SIGNER, DOMAIN, name, body, network=NET, seq=header.get("seq", 1) or 1)
    except (wire.WireError, KeyError):
        return
    got = wire.decode(env.to_bytes(), domain=DOMAIN, network=NET)
    assert got.digest == env.digest and got.body == env.body and got.signer == SIGNER.address
    _convert(got)


@fuzz(40)
@given(st.sampled_from(TYPES), st.data())
def test_valid_messages_of_every_type_decode_and_convert(name, data):
    body = _valid_body(name, data)
    fields = {k: v for k, v in body.items() if k not in ("network", "issued", "expiry", "seq")}
    signer = data.draw(st.sampled_from([SIGNER, *CHECKERS]))
    env = wire.sign(signer, DOMAIN, name, fields, network=NET, seq=1)
    guard = wire.ReplayGuard()
    got = wire.decode(env.to_bytes(), domain=DOMAIN, network=NET, replay=guard)
    _convert(got)
    with pytest.raises(wire.WireError, match="replay"):
        wire.decode(env.to_bytes(), domain=DOMAIN, network=NET, replay=guard)


@fuzz(60)
@given(st.sampled_from(TYPES), st.data())
def test_mutated_signed_messages_of_every_type_only_raise_wire_error(name, data):
    body = _valid_body(name, data)
    fields = {k: v for k, v in body.items() if k not in ("network", "issued", "expiry", "seq")}
    env = wire.sign(SIGNER, DOMAIN, name, fields, network=NET, seq=1)
    buf = bytearray(env.to_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        if op == "flip":
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i : i + data.draw(st.integers(1, 32))]
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=32))
        else:
            buf += buf[: data.draw(st.integers(1, 64))]
        if not buf:
            buf = bytearray(b"\x00")
    try:
        got = wire.decode(bytes(buf), domain=DOMAIN, network=NET)
    except wire.WireError:
        return
    assert got.digest == env.digest  # what still decodes is the same signed content


@fuzz(150)
@given(st.sampled_from(TYPES), anything)
def test_host_gossip_validator_never_raises(name, garbage):
    """The topic validator (host._validator) is what py-libp2p calls on every message."""

    data = _pack({"v": 1, "type": name, "body": garbage, "signer": b"\x01" * 20, "sig": b"\x02" * 65})
    msg = type("Msg", (), {"data": data or b"\xc1", "from_id": b"\x00\x25" + b"\x07" * 37, "seqno": b"1"})
    validate = _validator_host()._validator("/kaisar/devnet/x", frozenset([name]))
    assert validate(None, msg) is False


_VALIDATOR_HOST: list = []


def _validator_host():
    from node.p2p.host import HostOptions, KaisarHost

    if not _VALIDATOR_HOST:  # a host object, not listening: only its validator runs here
        _VALIDATOR_HOST.append(
            KaisarHost(SIGNER, network=NET, domain=DOMAIN, options=HostOptions(dht=False))
        )
    return _VALIDATOR_HOST[0]


# consensus objects built from hostile fields ---------------------------------------


@fuzz(200)
@given(
    st.integers(-5, 2**257),
    st.integers(-5, 2**257),
    st.binary(max_size=24),
    st.lists(st.binary(max_size=70) | st.sampled_from([b"\x00" * 65, b"\xff" * 65]), max_size=8),
    st.binary(max_size=40),
)
def test_certificate_verification_returns_a_verdict(job, round_, provider, sigs, gpu_class):
    prov = "0x" + provider.hex()
    assert qcmod.is_valid_assign_qc(DOMAIN, CHECKER_SET, qcmod.AssignQC(job, round_, prov, tuple(sigs))) is False
    popw = qcmod.PopwQC(job, prov, round_ % 300, gpu_class, tuple(sigs))
    assert qcmod.is_valid_popw_qc(DOMAIN, CHECKER_SET, popw, job) is False
    for s in sigs:
        assert qcmod.recover_signer(b"\x11" * 32, s) is None or s and len(s) == 65


# frames -----------------------------------------------------------------------------


@fuzz(300)
@given(st.binary(max_size=4096))
def test_unpack_only_raises_frame_error(data):
    try:
        unpack(data, max_size=1024)
    except FrameError:
        pass


@fuzz(200)
@given(
    st.lists(
        st.binary(max_size=64)
        | st.integers(0, 2**32 - 1).map(LEN.pack)
        | st.builds(lambda b: LEN.pack(len(b)) + b, st.binary(max_size=200)),
        max_size=6,
    ),
    st.integers(1, 2048),
)
def test_recv_on_hostile_byte_streams_only_raises_frame_error(chunks, max_size):
    async def main():
        a, b = memory_pair()
        for c in chunks:
            await b.stream.write(c)
        await b.stream._send.aclose()  # EOF after the attacker's bytes
        for _ in range(len(chunks) + 1):
            try:
                await a.recv(max_size=max_size, timeout=1.0)
            except FrameError:
                return

    trio.run(main)


async def test_recv_times_out_on_a_silent_or_slow_stream():
    a, b = memory_pair()
    await b.stream.write(b"\x00\x00")  # half a header, then nothing
    with trio.fail_after(3):
        with pytest.raises(FrameError, match="timed out"):
            await a.recv(timeout=0.3)
    c, d = memory_pair()

    async def drip():
        for byte in LEN.pack(100) + b"\x00" * 100:
            await d.stream.write(bytes([byte]))
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip)
        with trio.fail_after(3), pytest.raises(FrameError, match="timed out"):
            await c.recv(timeout=0.5)  # one deadline for the whole frame, not per byte
        nursery.cancel_scope.cancel()


def test_framed_stream_type_is_real():
    assert isinstance(memory_pair()[0], FramedStream)


def test_uint256_fields_hold_only_what_msgpack_carries():
    """Found by fuzzing: a price >= 2**64 signed fine, then the ad could not be encoded
    (OverflowError in publish, logged at debug): the provider never advertised."""
    fields = {
        "peer": "16Uiu2HAm", "addrs": [], "gpu_class": "cpu", "price_per_gpu_hour_wei": 2**64,
        "gpus_total": 1, "gpus_free": 1, "accepting": True, "inventory": {},
    }
    with pytest.raises(wire.WireError, match="price_per_gpu_hour_wei"):
        wire.sign(SIGNER, DOMAIN, "ProviderAd", fields, network=NET, seq=1)
    env = wire.sign(SIGNER, DOMAIN, "ProviderAd", fields | {"price_per_gpu_hour_wei": 2**64 - 1}, network=NET, seq=1)
    assert wire.decode(env.to_bytes(), domain=DOMAIN, network=NET).body["price_per_gpu_hour_wei"] == 2**64 - 1
