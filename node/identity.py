"""One secp256k1 key = libp2p peer ID = Ethereum address.

Every node and every end-user has exactly one key. The same 32 secret bytes give:

- the Ethereum address (keccak(uncompressed pubkey)[12:]) that the chain knows and
  that ``ecrecover`` returns for every protocol signature;
- the libp2p peer ID (identity multihash of the protobuf-encoded compressed
  secp256k1 public key), so a connected peer maps to a chain address.

Keys at rest are Ethereum keystore v3 JSON (scrypt + AES-128-CTR) written 0600.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import coincurve
from eth_keys import keys as eth_keys
from eth_utils import to_checksum_address

from node.eip712 import keccak

if TYPE_CHECKING:  # libp2p and eth_account are heavy imports; load them on first use
    from libp2p.crypto.keys import KeyPair
    from libp2p.peer.id import ID

PASSWORD_ENV = "KAISAR_PASSWORD"
MIN_PASSWORD_LEN = 8


class IdentityError(Exception):
    """A key file or password problem a user can fix (exit code 2 in the CLI)."""


@dataclass(frozen=True)
class Identity:
    """A node's or user's single secp256k1 key."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise IdentityError("a secp256k1 secret is 32 bytes")
        try:
            coincurve.PrivateKey(self.secret)
        except ValueError as exc:  # zero or >= curve order
            raise IdentityError(f"invalid secp256k1 secret: {exc}") from exc

    # construction -----------------------------------------------------------

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(32))

    @classmethod
    def from_hex(cls, hexkey: str) -> Identity:
        raw = hexkey[2:] if hexkey.startswith("0x") else hexkey
        try:
            return cls(bytes.fromhex(raw))
        except ValueError as exc:
            raise IdentityError("private key must be 32 bytes of hex") from exc

    # derived names -----------------------------------------------------------

    @functools.cached_property
    def address(self) -> str:
        """Checksummed Ethereum address (cached: deriving it costs ~2.5 ms, and every
        signed envelope names its signer)."""
        return eth_keys.PrivateKey(self.secret).public_key.to_checksum_address()

    @property
    def keypair(self) -> KeyPair:
        """The libp2p key pair (same secret) for the host."""
        from libp2p.crypto.secp256k1 import create_new_key_pair

        return create_new_key_pair(self.secret)

    @property
    def peer_id(self) -> ID:
        from libp2p.peer.id import ID

        return ID.from_pubkey(self.keypair.public_key)

    @property
    def public_key_compressed(self) -> bytes:
        return coincurve.PrivateKey(self.secret).public_key.format(compressed=True)

    # signing -----------------------------------------------------------------

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte Ethereum signature r || s || v (v in {27, 28}) over a 32-byte digest."""
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        sig = eth_keys.PrivateKey(self.secret).sign_msg_hash(digest)
        return sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v + 27])

    def hex(self) -> str:
        return "0x" + self.secret.hex()


def recover_address(digest: bytes, signature: bytes) -> str:
    """ecrecover: the checksummed address that signed ``digest``.

    Raises ValueError on a malformed or non-canonical signature (high s, bad v),
    matching what an EVM contract using ecrecover with the EIP-2 check accepts.
    """
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes")
    if len(signature) != 65:
        raise ValueError("signature must be 65 bytes")
    v = signature[64]
    if v not in (27, 28):
        raise ValueError("signature v must be 27 or 28")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2):
        raise ValueError("signature r/s out of range (non-canonical)")
    try:
        # coincurve directly: eth_keys' Signature/PublicKey objects double the cost
        pub = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), digest, hasher=None
        )
    except ValueError as exc:  # r not on the curve, etc.
        raise ValueError(f"signature does not recover: {exc}") from None
    return to_checksum_address(keccak(pub.format(compressed=False)[1:])[12:])


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def peer_id_to_address(peer_id: ID) -> str:
    """Map a secp256k1 libp2p peer ID to the Ethereum address of the same key."""
    from libp2p.crypto.secp256k1 import Secp256k1PublicKey

    try:
        pub = peer_id.extract_public_key()
    except Exception as exc:  # identity multihash missing or not a key
        raise ValueError(f"peer id carries no public key: {exc}") from exc
    if not isinstance(pub, Secp256k1PublicKey):
        raise ValueError("peer id is not a secp256k1 key")
    uncompressed = pub.impl.format(compressed=False)[1:]
    return to_checksum_address(keccak(uncompressed)[12:])


# keystore ------------------------------------------------------------------


def read_password(prompt: str = "Keystore password: ", *, confirm: bool = False) -> str:
    """Password from $KAISAR_PASSWORD, else an interactive prompt (never argv)."""
    pw = os.environ.get(PASSWORD_ENV)
    if pw is not None:
        return pw
    import getpass
    import sys

    if not sys.stdin.isatty():
        raise IdentityError(f"no password: set {PASSWORD_ENV} or run in a terminal")
    pw = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat password: ") != pw:
        raise IdentityError("passwords do not match")
    return pw


def save_keystore(
    identity: Identity,
    path: Path,
    password: str,
    *,
    overwrite: bool = False,
    scrypt_n: int | None = None,
) -> None:
    """Write an encrypted keystore v3 file with mode 0600 (created that way, never widened).

    ``scrypt_n`` lowers the KDF cost for throwaway test and devnet keys only; real keys
    use eth-account's default (2**18).
    """
    if len(password) < MIN_PASSWORD_LEN:
        raise IdentityError(f"password must be at least {MIN_PASSWORD_LEN} characters")
    path = Path(path)
    if path.exists() and not overwrite:
        raise IdentityError(f"{path} exists; refusing to overwrite a key")
    if not path.parent.exists():
        raise IdentityError(f"directory {path.parent} does not exist")
    from eth_account import Account

    blob = Account.encrypt(identity.secret, password, kdf="scrypt", iterations=scrypt_n)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(blob).encode())
    finally:
        os.close(fd)


def load_keystore(path: Path, password: str) -> Identity:
    path = Path(path)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise IdentityError(f"key file {path} not found") from None
    except OSError as exc:
        raise IdentityError(f"cannot read key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise IdentityError(f"{path} is not a keystore v3 JSON file") from None
    try:
        blob = json.loads(raw)
        if not isinstance(blob, dict) or "crypto" not in {k.lower() for k in blob}:
            raise ValueError
    except ValueError:
        raise IdentityError(f"{path} is not a keystore v3 JSON file") from None
    from eth_account import Account

    try:
        secret = Account.decrypt(blob, password)
    except ValueError:
        raise IdentityError(f"wrong password for {path}") from None
    except Exception as exc:
        raise IdentityError(f"cannot decrypt {path}: {exc}") from None
    return Identity(bytes(secret))


def keystore_address(path: Path) -> str | None:
    """The address recorded in a keystore file, without decrypting (may be absent)."""
    try:
        blob = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    addr = blob.get("address") if isinstance(blob, dict) else None
    return to_checksum_address("0x" + addr.removeprefix("0x")) if isinstance(addr, str) else None
