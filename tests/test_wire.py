"""Wire format: every rejection path, and nothing but WireError ever escapes decode."""

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import wire
from node.eip712 import Domain
from node.identity import Identity
from node.wire import Field, MessageType, ReplayGuard, WireError

DOMAIN = Domain(1337, "0x" + "ab" * 20)
NET = "testnet"
ALICE = Identity((7).to_bytes(32, "big"))
MALLORY = Identity((8).to_bytes(32, "big"))
NOW = 1_800_000_000_000

PING = wire.register(
    MessageType(
        "TestPing",
        (
            Field("n", "uint", bits=32),
            Field("who", "address"),
            Field("tags", "list", max_len=4),
            Field("note", "str", max_len=16),
        ),
        max_size=1024,
        max_ttl_ms=10_000,
        ordered=True,
    )
)
CHECKER_ONLY = wire.register(
    MessageType("TestCheckerOnly", (Field("x", "uint"),), roles=frozenset({"checker"}))
)


def ping(seq=1, issued=NOW, signer=ALICE, **over):
    fields = {"n": 5, "who": b"\x11" * 20, "tags": ["a", 1], "note": "hi"} | over
    return wire.sign(signer, DOMAIN, "TestPing", fields, network=NET, seq=seq, issued=issued, ttl_ms=5000)


def dec(data, **kw):
    kw.setdefault("now", NOW + 1)
    return wire.decode(data, domain=DOMAIN, network=NET, **kw)


def reason(data, **kw):
    with pytest.raises(WireError) as info:
        dec(data, **kw)
    return info.value.reason


def test_roundtrip():
    env = ping()
    out = dec(env.to_bytes())
    assert out.signer == ALICE.address and out.body == env.body and out.digest == env.digest


def test_sign_validates_schema():
    with pytest.raises(WireError):
        ping(n=-1)
    with pytest.raises(WireError):
        ping(note="x" * 17)


def test_tampered_body_rejected():
    raw = msgpack.unpackb(ping().to_bytes())
    raw["body"]["n"] = 6
    assert reason(msgpack.packb(raw)) == "signature"


def test_resigned_by_other_key_rejected():
    # Mallory signs the same body but claims Alice as signer.
    raw = msgpack.unpackb(ping(signer=MALLORY).to_bytes())
    raw["signer"] = bytes.fromhex(ALICE.address[2:])
    assert reason(msgpack.packb(raw)) == "signature"


def test_other_domain_rejected():
    data = ping().to_bytes()
    with pytest.raises(WireError) as info:
        wire.decode(data, domain=Domain(1338, DOMAIN.verifying_contract), network=NET, now=NOW + 1)
    assert info.value.reason == "signature"
    with pytest.raises(WireError) as info:
        wire.decode(data, domain=DOMAIN, network="othernet", now=NOW + 1)
    assert info.value.reason == "network"


def test_expired_future_and_ttl():
    assert reason(ping().to_bytes(), now=NOW + 5000) == "expired"
    assert reason(ping(issued=NOW + 60_000).to_bytes()) == "future"
    long = wire.sign(ALICE, DOMAIN, "TestPing", {"n": 1, "who": b"\0" * 20, "tags": [], "note": ""},
                     network=NET, seq=1, issued=NOW, ttl_ms=20_000)
    assert reason(long.to_bytes()) == "ttl"


def test_replay_and_seq_order():
    guard = ReplayGuard()
    first = ping(seq=5)
    dec(first.to_bytes(), replay=guard)
    assert reason(first.to_bytes(), replay=guard) == "replay"
    assert reason(ping(seq=4).to_bytes(), replay=guard) == "replay"
    assert reason(ping(seq=5, n=9).to_bytes(), replay=guard) == "replay"
    dec(ping(seq=6).to_bytes(), replay=guard)
    # Another signer has its own sequence.
    dec(ping(seq=1, signer=MALLORY).to_bytes(), replay=guard)


def test_rejected_message_not_recorded_as_seen():
    guard = ReplayGuard()
    env = wire.sign(ALICE, DOMAIN, "TestCheckerOnly", {"x": 1}, network=NET, seq=1, issued=NOW)

    class Roles:
        def __init__(self, roles):
            self.roles = roles

        def roles_of(self, address):
            return self.roles

    assert reason(env.to_bytes(), replay=guard, roles=Roles(frozenset())) == "role"
    # Once the signer is a checker, the same bytes pass: the failed attempt left no trace.
    assert dec(env.to_bytes(), replay=guard, roles=Roles(frozenset({"checker"}))).signer == ALICE.address


def test_size_limit_checked_before_decoding():
    huge = b"\x92" + b"\xc0" * (10**6)
    assert reason(huge) == "oversize"


def test_unknown_type_and_shapes():
    raw = msgpack.unpackb(ping().to_bytes())
    raw["type"] = "Nope"
    assert reason(msgpack.packb(raw)) == "unknown-type"
    assert reason(msgpack.packb([1, 2])) == "malformed"
    assert reason(b"\xc1") == "malformed"
    raw = msgpack.unpackb(ping().to_bytes())
    raw["body"]["extra"] = 1
    assert reason(msgpack.packb(raw)) == "schema"
    assert reason(ping().to_bytes(), allowed_types=frozenset({"Heartbeat"})) == "unknown-type"


def test_replay_guard_is_bounded():
    guard = ReplayGuard(max_entries=10)
    for i in range(50):
        dec(ping(seq=i + 1).to_bytes(), replay=guard)
    assert len(guard._seen) <= 10


# property-based: hostile bytes ---------------------------------------------------

VALID = ping().to_bytes()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_wire_error(data):
    with pytest.raises(WireError):
        dec(data)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_valid_bytes_only_raise_wire_error(data):
    buf = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i : i + data.draw(st.integers(1, 16))]
        else:
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    try:
        env = dec(bytes(buf))
    except WireError:
        return
    # A mutation that still decodes must be the very same signed content.
    assert env.digest == ping().digest


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8) | st.binary(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_like, json_like)
def test_structured_garbage_bodies_only_raise_wire_error(body, signer):
    for obj in (
        {"v": 1, "type": "TestPing", "body": body, "signer": b"\x01" * 20, "sig": b"\x02" * 65},
        {"v": 1, "type": "TestPing", "body": {"n": body, "who": signer}, "signer": signer, "sig": signer},
    ):
        try:
            data = msgpack.packb(obj, use_bin_type=True)
        except (OverflowError, TypeError, ValueError):
            continue
        with pytest.raises(WireError):
            dec(data)
