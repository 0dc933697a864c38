"""Signed msgpack envelopes: the only way protocol messages travel.

Envelope (msgpack map): ``{"v": 1, "type": str, "body": map, "signer": 20 bytes, "sig": 65 bytes}``.

The signature is EIP-712 over the body as a flat struct named after the type, whose
fields are the common header (``network``, ``issued``, ``expiry``, ``seq``) followed by
the type's own fields. Scalar fields map to their EIP-712 type; structured fields
(lists, maps) are carried as canonical msgpack and signed as ``bytes`` (hashed).

``decode`` checks, in this order, and raises ``WireError(reason)`` at the first failure:

1. size limit, before any decoding             -> "oversize"
2. msgpack + envelope shape                    -> "malformed"
3. known type and body schema                  -> "unknown-type" / "schema"
4. network id                                  -> "network"
5. signature recovers to ``signer``            -> "signature"
6. freshness: issued/expiry against the clock  -> "future" / "expired" / "ttl"
7. replay: same digest again, or a ``seq`` not above the last one seen ("ordered" types)
                                                -> "replay"
8. role: the signer may send this type          -> "role"

Every failure is a ``WireError``; nothing else escapes ``decode`` (property-tested).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
from eth_utils import to_checksum_address

from node.eip712 import Domain, StructType, signing_digest
from node.identity import Identity, recover_address

WIRE_VERSION = 1
MAX_CLOCK_SKEW_MS = 30_000
DEFAULT_MAX_SIZE = 16 * 1024
HEADER_FIELDS: tuple[tuple[str, str], ...] = (
    ("network", "string"),
    ("issued", "uint64"),
    ("expiry", "uint64"),
    ("seq", "uint64"),
)
MAX_NETWORK_LEN = 64
MSGPACK_INT_BITS = 64  # the widest integer msgpack encodes
ROLES = frozenset({"provider", "checker", "client", "explorer"})


class WireError(Exception):
    """A message was rejected. ``reason`` is a short stable code (used as a metric label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# field kinds ------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One body field: its name, EIP-712 type and the checks its value must pass.

    kind: "uint" (bits), "int" (bits), "bool", "str" (max_len), "bytes" (max_len or
    exact length), "address" (20 bytes), "bytes32", "list" / "map" (structured, max_len
    elements; ``check`` validates the contents).
    """

    name: str
    kind: str
    bits: int = 64
    max_len: int = 256
    exact_len: int | None = None
    check: Callable[[Any], None] | None = None

    @property
    def eip712_type(self) -> str:
        return {
            "uint": f"uint{self.bits}",
            "int": f"int{self.bits}",
            "bool": "bool",
            "str": "string",
            "bytes": "bytes",
            "address": "address",
            "bytes32": "bytes32",
            "list": "bytes",
            "map": "bytes",
        }[self.kind]

    def validate(self, value: Any) -> None:
        k = self.kind
        if k == "uint":
            # msgpack carries at most 64-bit integers: a wider EIP-712 type (uint256, as the
            # contracts use) still holds only values a message can carry, else signing a
            # message would succeed and sending it fail.
            top = 1 << min(self.bits, MSGPACK_INT_BITS)
            _require(type(value) is int and 0 <= value < top, f"{self.name}: uint{self.bits} < 2**64")
        elif k == "int":
            lim = 1 << (min(self.bits, MSGPACK_INT_BITS) - 1)
            _require(type(value) is int and -lim <= value < lim, f"{self.name}: int{self.bits}")
        elif k == "bool":
            _require(type(value) is bool, f"{self.name}: bool")
        elif k == "str":
            _require(
                type(value) is str and len(value.encode()) <= self.max_len,
                f"{self.name}: string of <= {self.max_len} bytes",
            )
        elif k == "bytes":
            _require(type(value) is bytes, f"{self.name}: bytes")
            if self.exact_len is not None:
                _require(len(value) == self.exact_len, f"{self.name}: {self.exact_len} bytes")
            _require(len(value) <= self.max_len, f"{self.name}: <= {self.max_len} bytes")
        elif k == "address":
            _require(type(value) is bytes and len(value) == 20, f"{self.name}: 20-byte address")
        elif k == "bytes32":
            _require(type(value) is bytes and len(value) == 32, f"{self.name}: 32 bytes")
        elif k == "list":
            _require(
                type(value) is list and len(value) <= self.max_len,
                f"{self.name}: list of <= {self.max_len}",
            )
        elif k == "map":
            _require(
                type(value) is dict and len(value) <= self.max_len,
                f"{self.name}: map of <= {self.max_len}",
            )
        else:  # pragma: no cover - programming error in a schema
            raise AssertionError(f"unknown field kind {k}")
        if self.check is not None:
            try:
                self.check(value)
            except WireError:
                raise
            except Exception as exc:
                raise WireError("schema", f"{self.name}: {exc}") from None

    def eip712_value(self, value: Any) -> Any:
        if self.kind == "address":
            return to_checksum_address(value)
        if self.kind in ("list", "map"):
            return canonical(value)
        return value


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise WireError("schema", what)


def canonical(value: Any) -> bytes:
    """Canonical msgpack: maps with sorted keys, so equal values sign equally."""
    return msgpack.packb(_sorted(value), use_bin_type=True)


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value, key=lambda x: (str(type(x)), x))}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


# message types ----------------------------------------------------------------


@dataclass(frozen=True)
class MessageType:
    """A signed message kind: schema, limits, who may sign it, replay rules."""

    name: str
    fields: tuple[Field, ...]
    max_size: int = DEFAULT_MAX_SIZE
    max_ttl_ms: int = 60_000
    roles: frozenset[str] | None = None  # None: any signer
    ordered: bool = False  # seq must strictly increase per signer
    struct: StructType = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [n for n, _ in HEADER_FIELDS] + [f.name for f in self.fields]
        assert len(set(names)) == len(names), f"duplicate field in {self.name}"
        object.__setattr__(
            self,
            "struct",
            StructType(
                self.name, HEADER_FIELDS + tuple((f.name, f.eip712_type) for f in self.fields)
            ),
        )


REGISTRY: dict[str, MessageType] = {}


def register(mtype: MessageType) -> MessageType:
    existing = REGISTRY.get(mtype.name)
    if existing is not None and existing != mtype:
        raise ValueError(f"message type {mtype.name} registered twice with different schemas")
    REGISTRY[mtype.name] = mtype
    return mtype


# envelopes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    type: str
    body: dict[str, Any]
    signer: str  # checksummed address
    sig: bytes
    digest: bytes

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            {
                "v": WIRE_VERSION,
                "type": self.type,
                "body": self.body,
                "signer": bytes.fromhex(self.signer[2:]),
                "sig": self.sig,
            },
            use_bin_type=True,
        )

    @property
    def network(self) -> str:
        return self.body["network"]

    @property
    def seq(self) -> int:
        return self.body["seq"]


def now_ms() -> int:
    return int(time.time() * 1000)


def message_digest(domain: Domain, mtype: MessageType, body: dict[str, Any]) -> bytes:
    values = {n: body[n] for n, _ in HEADER_FIELDS}
    for f in mtype.fields:
        values[f.name] = f.eip712_value(body[f.name])
    return signing_digest(domain, mtype.struct, values)


def sign(
    identity: Identity,
    domain: Domain,
    type_name: str,
    fields: dict[str, Any],
    *,
    network: str,
    seq: int,
    ttl_ms: int | None = None,
    issued: int | None = None,
) -> Envelope:
    """Build and sign a message; validates it against its schema first."""
    mtype = REGISTRY[type_name]
    issued = now_ms() if issued is None else issued
    ttl = mtype.max_ttl_ms if ttl_ms is None else ttl_ms
    body = {"network": network, "issued": issued, "expiry": issued + ttl, "seq": seq, **fields}
    _check_body(mtype, body)
    digest = message_digest(domain, mtype, body)
    return Envelope(type_name, body, identity.address, identity.sign_digest(digest), digest)


def _check_body(mtype: MessageType, body: Any) -> None:
    _require(type(body) is dict, "body must be a map")
    expected = {n for n, _ in HEADER_FIELDS} | {f.name for f in mtype.fields}
    extra = set(body) - expected
    missing = expected - set(body)
    _require(not extra, f"unknown field(s) {sorted(map(str, extra))}")
    _require(not missing, f"missing field(s) {sorted(missing)}")
    _require(
        type(body["network"]) is str and 0 < len(body["network"]) <= MAX_NETWORK_LEN, "network"
    )
    for name in ("issued", "expiry", "seq"):
        _require(type(body[name]) is int and 0 <= body[name] < 1 << 64, f"{name}: uint64")
    for f in mtype.fields:
        f.validate(body[f.name])


# decoding ------------------------------------------------------------------------


class RoleRegistry(Protocol):
    """Who may sign what. Later issues back it with the chain's checker/provider sets."""

    def roles_of(self, address: str) -> frozenset[str]: ...


class ReplayGuard:
    """Bounded memory of seen digests (until their expiry) and last seq per (signer, type)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._seq: OrderedDict[tuple[str, str], int] = OrderedDict()

    def check(self, env: Envelope, mtype: MessageType, now: int) -> None:
        """Raise WireError('replay') if seen or out of order; does not record."""
        if env.digest in self._seen:
            raise WireError("replay", "message seen before")
        if mtype.ordered:
            last = self._seq.get((env.signer, env.type))
            if last is not None and env.seq <= last:
                raise WireError("replay", f"seq {env.seq} not above {last}")

    def record(self, env: Envelope, mtype: MessageType, now: int) -> None:
        self._seen[env.digest] = env.body["expiry"]
        if mtype.ordered:
            key = (env.signer, env.type)
            self._seq[key] = max(env.seq, self._seq.get(key, -1))
            self._seq.move_to_end(key)
        self._prune(now)

    def _prune(self, now: int) -> None:
        # Digests only need remembering until expiry: after that, freshness rejects them.
        while self._seen:
            digest, expiry = next(iter(self._seen.items()))
            if expiry < now - MAX_CLOCK_SKEW_MS or len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            else:
                break
        while len(self._seq) > self.max_entries:
            self._seq.popitem(last=False)


def decode(
    data: bytes,
    *,
    domain: Domain,
    network: str,
    now: int | None = None,
    replay: ReplayGuard | None = None,
    roles: RoleRegistry | None = None,
    allowed_types: frozenset[str] | None = None,
) -> Envelope:
    """Validate raw bytes into an Envelope, or raise WireError. See the module docstring."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("malformed", "not bytes")
    limit = max((t.max_size for t in REGISTRY.values()), default=DEFAULT_MAX_SIZE)
    if allowed_types:
        limit = max(REGISTRY[t].max_size for t in allowed_types if t in REGISTRY)
    if len(data) > limit:
        raise WireError("oversize", f"{len(data)} > {limit} bytes")
    raw = _unpack(bytes(data), limit)
    _require_shape(raw)
    type_name = raw["type"]
    if allowed_types is not None and type_name not in allowed_types:
        raise WireError("unknown-type", f"{type_name!r} not allowed here")
    mtype = REGISTRY.get(type_name)
    if mtype is None:
        raise WireError("unknown-type", repr(type_name)[:64])
    if len(data) > mtype.max_size:
        raise WireError("oversize", f"{len(data)} > {mtype.max_size} bytes for {type_name}")
    body = raw["body"]
    _check_body(mtype, body)
    if body["network"] != network:
        raise WireError("network", f"{body['network']!r} is not {network!r}")
    signer = to_checksum_address(raw["signer"])
    digest = message_digest(domain, mtype, body)
    try:
        recovered = recover_address(digest, raw["sig"])
    except ValueError as exc:
        raise WireError("signature", str(exc)) from None
    if recovered != signer:
        raise WireError("signature", "signature does not match signer")
    env = Envelope(type_name, body, signer, raw["sig"], digest)
    now = now_ms() if now is None else now
    check_fresh(env, mtype, now)
    if replay is not None:
        replay.check(env, mtype, now)
    if mtype.roles is not None:
        held = roles.roles_of(signer) if roles is not None else frozenset()
        if not held & mtype.roles:
            raise WireError("role", f"{signer} is not a {'/'.join(sorted(mtype.roles))}")
    if replay is not None:
        replay.record(env, mtype, now)
    return env


def check_fresh(env: Envelope, mtype: MessageType, now: int) -> None:
    issued, expiry = env.body["issued"], env.body["expiry"]
    if issued > now + MAX_CLOCK_SKEW_MS:
        raise WireError("future", f"issued {issued - now} ms ahead")
    if expiry <= now:
        raise WireError("expired", f"expired {now - expiry} ms ago")
    if expiry < issued or expiry - issued > mtype.max_ttl_ms:
        raise WireError("ttl", f"lifetime {expiry - issued} ms exceeds {mtype.max_ttl_ms}")


def _unpack(data: bytes, limit: int) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=4096,
            max_map_len=1024,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types; all mean "not a message"
        raise WireError("malformed", type(exc).__name__) from None


def _require_shape(raw: Any) -> None:
    ok = (
        type(raw) is dict
        and set(raw) == {"v", "type", "body", "signer", "sig"}
        and raw["v"] == WIRE_VERSION
        and type(raw["type"]) is str
        and 0 < len(raw["type"]) <= 64
        and type(raw["body"]) is dict
        and type(raw["signer"]) is bytes
        and len(raw["signer"]) == 20
        and type(raw["sig"]) is bytes
        and len(raw["sig"]) == 65
    )
    if not ok:
        raise WireError("malformed", "not a v1 envelope")


# the foundation's own message ------------------------------------------------------


def _check_addrs(value: list) -> None:
    for a in value:
        if type(a) is not str or not a.startswith("/") or len(a) > 256:
            raise ValueError("addrs must be multiaddr strings")


HEARTBEAT = register(
    MessageType(
        "Heartbeat",
        (
            Field("role", "str", max_len=16, check=lambda r: _require(r in ROLES, "role")),
            Field("peer", "str", max_len=128),
            Field("addrs", "list", max_len=16, check=_check_addrs),
        ),
        max_size=4096,
        max_ttl_ms=60_000,
        ordered=True,
    )
)
