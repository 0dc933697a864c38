"""EIP-712 typed-data hashing, the one signing rule of the protocol.

Every signed message is ``keccak(0x1901 || domainSeparator || hashStruct(message))``
so the same 65-byte signature verifies off-chain (``identity.recover_address``) and
on-chain (``ecrecover`` in the Vyper contracts, which rebuild the same digest).

Only flat structs of atomic types are supported: ``uintN``, ``intN``, ``address``,
``bool``, ``bytes32`` and the dynamic ``bytes`` / ``string`` (hashed, as EIP-712
says). Nested data that no contract needs to read is carried as ``bytes`` holding a
canonical msgpack encoding, so its hash is still bound by the signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from eth_utils import keccak as _eth_keccak
from eth_utils import to_canonical_address

try:  # pysha3 is ~10x faster than eth-hash's default (pycryptodome) and keccak dominates
    from sha3 import keccak_256 as _keccak_256  # every message check (digests, addresses)
except ImportError:  # pragma: no cover - safe-pysha3 is a declared dependency
    _keccak_256 = None


def keccak(data: bytes) -> bytes:
    if _keccak_256 is not None:
        return _keccak_256(data).digest()
    return _eth_keccak(data)  # pragma: no cover

DOMAIN_NAME = "Kaisar"
DOMAIN_VERSION = "1"
ZERO_ADDRESS = "0x" + "00" * 20

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"


@dataclass(frozen=True)
class Domain:
    """Binds a signature to one network: chain id and the verifying contract.

    ``verifying_contract`` is the Staking (checker registry) contract address; every
    Kaisar contract that checks signatures builds its domain separator from it. Before
    contracts exist (tests, a bare p2p mesh) it is the zero address.
    """

    chain_id: int
    verifying_contract: str = ZERO_ADDRESS
    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION

    def separator(self) -> bytes:
        return _separator(self)

    def _compute_separator(self) -> bytes:
        return keccak(
            keccak(DOMAIN_TYPE.encode())
            + keccak(self.name.encode())
            + keccak(self.version.encode())
            + self.chain_id.to_bytes(32, "big")
            + _pad_left(to_canonical_address(self.verifying_contract))
        )


@dataclass(frozen=True)
class StructType:
    """A flat EIP-712 struct: name and ordered (field, solidity type) pairs."""

    name: str
    fields: tuple[tuple[str, str], ...]

    @property
    def encode_type(self) -> str:
        return f"{self.name}(" + ",".join(f"{t} {n}" for n, t in self.fields) + ")"

    @property
    def type_hash(self) -> bytes:
        return _type_hash(self.encode_type)

    def hash_struct(self, values: dict) -> bytes:
        return keccak(self.type_hash + b"".join(encode_value(t, values[n]) for n, t in self.fields))


@lru_cache(maxsize=256)
def _separator(domain: Domain) -> bytes:
    return domain._compute_separator()


@lru_cache(maxsize=1024)
def _type_hash(encode_type: str) -> bytes:
    return keccak(encode_type.encode())


def signing_digest(domain: Domain, struct: StructType, values: dict) -> bytes:
    """The 32-byte digest an EIP-712 signer signs and ``ecrecover`` checks."""
    return keccak(b"\x19\x01" + domain.separator() + struct.hash_struct(values))


def encode_value(typ: str, value: object) -> bytes:
    """32-byte EIP-712 encoding of one atomic value; raises ValueError if it does not fit."""
    if typ == "address":
        if not isinstance(value, str):
            raise ValueError("address must be a hex string")
        return _pad_left(to_canonical_address(value))
    if typ == "bool":
        if not isinstance(value, bool):
            raise ValueError("bool expected")
        return int(value).to_bytes(32, "big")
    if typ == "bytes32":
        if not isinstance(value, bytes) or len(value) != 32:
            raise ValueError("bytes32 must be 32 bytes")
        return value
    if typ == "bytes":
        if not isinstance(value, bytes):
            raise ValueError("bytes expected")
        return keccak(value)
    if typ == "string":
        if not isinstance(value, str):
            raise ValueError("string expected")
        return keccak(value.encode())
    if typ.startswith("uint"):
        bits = int(typ[4:] or 256)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
            raise ValueError(f"{typ} out of range")
        return value.to_bytes(32, "big")
    if typ.startswith("int"):
        bits = int(typ[3:] or 256)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not -(1 << (bits - 1)) <= value < 1 << (bits - 1)
        ):
            raise ValueError(f"{typ} out of range")
        return (value % (1 << 256)).to_bytes(32, "big")
    raise ValueError(f"unsupported EIP-712 type {typ}")


def _pad_left(raw: bytes) -> bytes:
    return raw.rjust(32, b"\x00")
