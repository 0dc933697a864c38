import json
import os
import stat

import pytest
from libp2p.crypto.secp256k1 import Secp256k1PublicKey

from node.identity import (
    Identity,
    IdentityError,
    load_keystore,
    peer_id_to_address,
    recover_address,
    save_keystore,
)


def test_peer_id_and_address_come_from_one_key():
    ident = Identity.generate()
    digest = os.urandom(32)
    # Sign with the Ethereum side, recover the address ...
    sig = ident.sign_digest(digest)
    assert recover_address(digest, sig) == ident.address
    # ... and the public key carried inside the libp2p peer ID verifies a libp2p signature
    pub = ident.peer_id.extract_public_key()
    assert isinstance(pub, Secp256k1PublicKey)
    msg = b"kaisar"
    assert pub.verify(msg, ident.keypair.private_key.sign(msg))
    # ... and maps back to the same Ethereum address.
    assert peer_id_to_address(ident.peer_id) == ident.address


def test_other_key_does_not_recover_to_address():
    a, b = Identity.generate(), Identity.generate()
    digest = os.urandom(32)
    assert recover_address(digest, b.sign_digest(digest)) != a.address
    assert peer_id_to_address(b.peer_id) != a.address


def test_known_vector():
    # secret 1 -> well-known address of the generator point
    ident = Identity((1).to_bytes(32, "big"))
    assert ident.address == "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


def test_recover_rejects_malformed():
    ident = Identity.generate()
    digest = os.urandom(32)
    sig = bytearray(ident.sign_digest(digest))
    with pytest.raises(ValueError):
        recover_address(digest, bytes(sig[:64]))
    sig[64] = 5
    with pytest.raises(ValueError):
        recover_address(digest, bytes(sig))


def test_invalid_secrets_rejected():
    with pytest.raises(IdentityError):
        Identity(b"\x00" * 32)
    with pytest.raises(IdentityError):
        Identity(b"\x01" * 31)
    with pytest.raises(IdentityError):
        Identity.from_hex("zz")


def test_keystore_roundtrip_mode_and_wrong_password(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "k.json"
    save_keystore(ident, path, "correct horse")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    blob = json.loads(path.read_text())
    assert ident.secret.hex() not in path.read_text()
    assert blob["version"] == 3
    assert load_keystore(path, "correct horse") == ident
    with pytest.raises(IdentityError, match="wrong password"):
        load_keystore(path, "wrong password")
    with pytest.raises(IdentityError, match="exists"):
        save_keystore(ident, path, "correct horse")
    with pytest.raises(IdentityError, match="at least"):
        save_keystore(ident, tmp_path / "short.json", "short")


def test_keystore_bad_files(tmp_path):
    with pytest.raises(IdentityError, match="not found"):
        load_keystore(tmp_path / "missing.json", "x" * 8)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(IdentityError, match="keystore"):
        load_keystore(bad, "x" * 8)


def test_unrecoverable_signature_is_value_error():
    # r = 1 with v = 27 is not a point on the curve: eth_keys raises BadSignature, which
    # must surface as ValueError (found by the wire mutation fuzzer).
    sig = (1).to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x1b"
    for digest in (b"\x00" * 32, b"\x01" * 32, os.urandom(32)):
        try:
            recover_address(digest, sig)
        except ValueError:
            pass
