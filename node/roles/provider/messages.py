"""What a provider says and what it accepts: signed message types and owner tokens.

Gossip (wire envelopes, signed by the provider's node key):

- ``ProviderAd`` on ``ads/1``: capacity, price, class, inventory, addresses; ``ordered``
  so a stale ad never replaces a newer one. Its ``expiry`` (envelope header) is the
  ad's lifetime: a checker forgets a provider whose last ad expired.
- ``JobStatus`` on ``status/1``: ``deployed`` / ``running`` (heartbeat) / ``stopped`` /
  ``failed`` with a reason, and what the light client needs to check the deployment:
  job id, round, the assignment QC's EIP-712 digest, the container port.

Owner tokens (stream protocols ``/kaisar/tunnel/1``, ``/kaisar/logs/1``,
``/kaisar/status/1``): the job owner's EIP-712 signature over
``JobAccess(string action,uint256 jobId,string provider,bytes32 nonce,uint64 expiry)``
where ``provider`` is the provider's libp2p peer id (base58) and ``action`` is
``tunnel``, ``logs`` or ``status``; so a token works for one action, one job, one
provider, once (nonce) and only until ``expiry`` (unix seconds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from node import wire
from node.eip712 import Domain, StructType, signing_digest
from node.identity import Identity, recover_address
from node.p2p.host import TOPIC_TYPES

AD_TOPIC = "ads/1"
STATUS_TOPIC = "status/1"
# provider -> job owner's peer, once the container is up: {t: "status", status: signed
# JobStatus envelope bytes, qc_sigs: [65-byte AssignVote signatures]} (no reply). The
# client takes it only from the peer whose key signed the status (see node/client/api.py).
NOTIFY_PROTOCOL = "/kaisar/notify/1"
NOTIFY_MAX_BYTES = 64 * 1024

# JobStatus.state values
DEPLOYING = "deploying"  # certified and accepted; the container is still starting
DEPLOYED = "deployed"
RUNNING = "running"
STOPPED = "stopped"
FAILED = "failed"
STATES = frozenset({DEPLOYING, DEPLOYED, RUNNING, STOPPED, FAILED})

# Owner token actions
ACTION_TUNNEL = "tunnel"
ACTION_LOGS = "logs"
ACTION_STATUS = "status"
ACTION_CLOSED = "closed"  # the owner closed the job on chain: look now, not at the next poll
ACTIONS = frozenset({ACTION_TUNNEL, ACTION_LOGS, ACTION_STATUS, ACTION_CLOSED})

NONCE_SIZE = 32
MAX_TOKEN_LIFETIME_S = 600  # a token further in the future than this is refused
MAX_ADDRS = 16


def _check_addrs(value: list) -> None:
    for a in value:
        if type(a) is not str or not a.startswith("/") or len(a) > 256:
            raise ValueError("addrs must be multiaddr strings")


def _check_inventory(value: dict) -> None:
    gpus = value.get("gpus", [])
    if type(gpus) is not list or len(gpus) > 64:
        raise ValueError("inventory.gpus: list of <= 64")
    for g in gpus:
        if type(g) is not dict or set(g) - {"index", "name", "uuid", "memory_mb"}:
            raise ValueError("inventory.gpus: maps of index, name, uuid, memory_mb")


def _check_state(value: str) -> None:
    if value not in STATES:
        raise ValueError(f"state must be one of {sorted(STATES)}")


PROVIDER_AD = wire.register(
    wire.MessageType(
        "ProviderAd",
        (
            wire.Field("peer", "str", max_len=128),
            wire.Field("addrs", "list", max_len=MAX_ADDRS, check=_check_addrs),
            wire.Field("gpu_class", "str", max_len=32),
            wire.Field("price_per_gpu_hour_wei", "uint", bits=256),
            wire.Field("gpus_total", "uint", bits=16),
            wire.Field("gpus_free", "uint", bits=16),
            wire.Field("accepting", "bool"),  # false: no container engine, deploys refused
            wire.Field("inventory", "map", max_len=8, check=_check_inventory),
        ),
        max_size=12 * 1024,
        max_ttl_ms=3_600_000,
        ordered=True,
    )
)

JOB_STATUS = wire.register(
    wire.MessageType(
        "JobStatus",
        (
            wire.Field("job_id", "uint", bits=256),
            wire.Field("round", "uint", bits=256),
            wire.Field("state", "str", max_len=16, check=_check_state),
            wire.Field("reason", "str", max_len=512),
            wire.Field("qc_digest", "bytes32"),  # EIP-712 digest of the AssignVote the QC signs
            wire.Field("peer", "str", max_len=128),  # provider peer id: where to open tunnels
            wire.Field("container_port", "uint", bits=16),
            wire.Field("image", "str", max_len=256),
            wire.Field("started", "uint"),  # unix seconds
            wire.Field("expires", "uint"),  # unix seconds
        ),
        max_size=4096,
        max_ttl_ms=600_000,
    )
)

TOPIC_TYPES[AD_TOPIC].add("ProviderAd")
TOPIC_TYPES[STATUS_TOPIC].add("JobStatus")


# owner tokens ---------------------------------------------------------------------

JOB_ACCESS = StructType(
    "JobAccess",
    (
        ("action", "string"),
        ("jobId", "uint256"),
        ("provider", "string"),
        ("nonce", "bytes32"),
        ("expiry", "uint64"),
    ),
)


class AccessDenied(Exception):
    """An owner request refused; ``reason`` is sent back to the peer and logged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class OwnerToken:
    action: str
    job_id: int
    nonce: bytes
    expiry: int  # unix seconds
    sig: bytes

    def to_frame(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "job_id": self.job_id,
            "nonce": self.nonce,
            "expiry": self.expiry,
            "sig": self.sig,
        }


def access_digest(
    domain: Domain, action: str, job_id: int, provider_peer_id: str, nonce: bytes, expiry: int
) -> bytes:
    return signing_digest(
        domain,
        JOB_ACCESS,
        {
            "action": action,
            "jobId": job_id,
            "provider": provider_peer_id,
            "nonce": nonce,
            "expiry": expiry,
        },
    )


def owner_token(
    identity: Identity,
    domain: Domain,
    action: str,
    job_id: int,
    provider_peer_id: str,
    nonce: bytes | None = None,
    expiry: int | None = None,
    *,
    now: float | None = None,
) -> OwnerToken:
    """The job owner signs access to one action on one job at one provider."""
    import time

    assert action in ACTIONS, action
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    expiry = int((time.time() if now is None else now) + 60) if expiry is None else expiry
    digest = access_digest(domain, action, job_id, provider_peer_id, nonce, expiry)
    return OwnerToken(action, job_id, nonce, expiry, identity.sign_digest(digest))


def tunnel_token(
    identity: Identity,
    domain: Domain,
    job_id: int,
    provider_peer_id: str,
    nonce: bytes | None = None,
    expiry: int | None = None,
) -> OwnerToken:
    """First frame of ``/kaisar/tunnel/1``: what a light client sends (``.to_frame()``)."""
    return owner_token(identity, domain, ACTION_TUNNEL, job_id, provider_peer_id, nonce, expiry)


def decode_token(obj: Any, action: str) -> OwnerToken:
    """Shape check of a token frame; raises AccessDenied('malformed ...')."""
    keys = {"action", "job_id", "nonce", "expiry", "sig"}
    if type(obj) is not dict or not keys <= set(obj) or set(obj) - keys - {"follow", "tail"}:
        raise AccessDenied("malformed request")
    ok = (
        obj["action"] == action
        and type(obj["job_id"]) is int
        and 0 <= obj["job_id"] < 1 << 256
        and type(obj["nonce"]) is bytes
        and len(obj["nonce"]) == NONCE_SIZE
        and type(obj["expiry"]) is int
        and 0 <= obj["expiry"] < 1 << 64
        and type(obj["sig"]) is bytes
        and len(obj["sig"]) == 65
    )
    if not ok:
        raise AccessDenied(f"malformed {action} token")
    return OwnerToken(action, obj["job_id"], obj["nonce"], obj["expiry"], obj["sig"])


def token_signer(domain: Domain, token: OwnerToken, provider_peer_id: str) -> str | None:
    digest = access_digest(
        domain, token.action, token.job_id, provider_peer_id, token.nonce, token.expiry
    )
    try:
        return recover_address(digest, token.sig)
    except Exception:  # malformed signature: nobody signed it
        return None


def check_token(
    domain: Domain, token: OwnerToken, provider_peer_id: str, owner: str, now: float
) -> None:
    """The owner-token rule (replay is checked by the caller's durable nonce store)."""
    # The token has not expired
    if token.expiry <= now:
        raise AccessDenied("token expired")
    # The token is short-lived (a leaked token is useless soon)
    if token.expiry > now + MAX_TOKEN_LIFETIME_S:
        raise AccessDenied(f"token lives longer than {MAX_TOKEN_LIFETIME_S} s")
    # The job's on-chain owner signed it for this provider, this action and job
    if token_signer(domain, token, provider_peer_id) != owner:
        raise AccessDenied("not signed by the job owner for this provider")
