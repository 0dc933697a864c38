"""The other side of the provider's protocols: what checkers and light clients call.

- ``send_deploy(host, provider_peer, qc, on_accepted=...)`` -> the provider's final reply
  frame (checker); ``on_accepted()`` when the provider's checks passed.
- ``query_status(host, provider_peer, owner, domain, job_id)`` -> (JobStatus envelope, QC sigs).
- ``stream_logs(host, provider_peer, owner, domain, job_id, follow=...)`` async iterator of bytes.
- ``notify_closed(host, provider_peer, owner, domain, job_id)`` -> the job's state at the
  provider after it re-read the job on chain (the owner has just closed it).
- ``open_tunnel(...)`` (``node.roles.provider.tunnel``): an authorized byte pipe.

``domain`` is the chain deployment's EIP-712 domain (``KaisarChain.domain``), the one the
provider checks owner tokens and QCs against.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from node import wire
from node.consensus.qc import AssignQC
from node.eip712 import Domain
from node.identity import Identity
from node.roles.provider import messages as msg
from node.roles.provider.deploy import PROTOCOL_ID as DEPLOY_PROTOCOL
from node.roles.provider.deploy import deploy_request
from node.roles.provider.service import CLOSED_PROTOCOL, LOGS_PROTOCOL, STATUS_PROTOCOL
from node.roles.provider.tunnel import TunnelRefused, TunnelStream, open_tunnel

__all__ = [
    "ProviderRefused",
    "TunnelRefused",
    "TunnelStream",
    "notify_closed",
    "open_tunnel",
    "query_status",
    "send_deploy",
    "stream_logs",
]


class ProviderRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def send_deploy(
    host: Any,
    provider_peer: Any,
    qc: AssignQC | dict,
    timeout: float = 60.0,
    *,
    on_accepted: Callable[[], None] | None = None,
) -> dict:
    """Send a deploy command (a QC, or a raw frame for tests); returns the final reply
    frame. A provider first answers ``{"t": "accepted"}`` once its checks passed (the
    container starts next): ``on_accepted()`` is called then."""
    frame = qc if isinstance(qc, dict) else deploy_request(qc)
    async with host.open_stream(provider_peer, DEPLOY_PROTOCOL) as framed:
        await framed.send(frame, timeout=timeout)
        reply = await framed.recv(timeout=timeout)
        if isinstance(reply, dict) and reply.get("t") == "accepted":
            if on_accepted is not None:
                on_accepted()
            reply = await framed.recv(timeout=timeout)
        return reply


async def query_status(
    host: Any, provider_peer: Any, owner: Identity, domain: Domain, job_id: int
) -> tuple[wire.Envelope, list[bytes]]:
    """Ask the provider for a job's status as its owner; the envelope is signature-checked."""
    token = msg.owner_token(owner, domain, msg.ACTION_STATUS, job_id, provider_peer.to_base58())
    reply = await host.request(provider_peer, STATUS_PROTOCOL, token.to_frame(), max_size=64 * 1024)
    if type(reply) is not dict or reply.get("ok") is not True:
        raise ProviderRefused(str(reply.get("reason", "refused")) if isinstance(reply, dict) else "refused")
    env = wire.decode(reply["status"], domain=host.domain, network=host.network)
    return env, list(reply["qc_sigs"])


async def notify_closed(
    host: Any, provider_peer: Any, owner: Identity, domain: Domain, job_id: int
) -> str:
    """Tell the provider its owner closed the job on chain; returns the job's state there."""
    token = msg.owner_token(owner, domain, msg.ACTION_CLOSED, job_id, provider_peer.to_base58())
    reply = await host.request(provider_peer, CLOSED_PROTOCOL, token.to_frame(), max_size=1024)
    if type(reply) is not dict or reply.get("ok") is not True or type(reply.get("state")) is not str:
        raise ProviderRefused(str(reply.get("reason", "refused")) if isinstance(reply, dict) else "refused")
    return str(reply["state"])


async def stream_logs(
    host: Any,
    provider_peer: Any,
    owner: Identity,
    domain: Domain,
    job_id: int,
    *,
    follow: bool = False,
    tail: int | str = "all",
    token_frame: dict | None = None,
) -> AsyncIterator[bytes]:
    """The container's log chunks; with ``follow`` until the container stops."""
    frame = token_frame or {
        **msg.owner_token(owner, domain, msg.ACTION_LOGS, job_id, provider_peer.to_base58()).to_frame(),
        "follow": follow,
        "tail": tail,
    }
    async with host.open_stream(provider_peer, LOGS_PROTOCOL) as framed:
        await framed.send(frame)
        first = await framed.recv(max_size=1024)
        if type(first) is not dict or first.get("ok") is not True:
            raise ProviderRefused(str(first.get("reason", "refused")) if isinstance(first, dict) else "refused")
        while True:
            f = await framed.recv(max_size=64 * 1024, timeout=3600.0 if follow else 30.0)
            if type(f) is not dict or f.get("t") != "data":
                return
            yield f["data"]
