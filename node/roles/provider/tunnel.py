"""``/kaisar/tunnel/1``: an owner-authorized byte pipe to a job container's port.

Frames, then raw bytes::

    client   -> provider  {action: "tunnel", job_id, nonce (32 B), expiry (unix s), sig (65 B)}
    provider -> client    {ok: true} | {ok: false, reason}
    then both directions carry raw bytes until either side closes.

After the first frame the pipe uses the libp2p stream itself (``framed.stream``):
frames are only for the handshake. ``FramedStream.recv`` may have read bytes past
the first frame into its buffer (``take_buffered()``); those are handed on first, on both sides.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from node.eip712 import Domain
from node.identity import Identity
from node.p2p.frames import FramedStream, FrameError
from node.roles.provider.messages import tunnel_token

log = logging.getLogger("kaisar.provider.tunnel")

PROTOCOL_ID = "/kaisar/tunnel/1"
TOKEN_MAX_BYTES = 512
TOKEN_TIMEOUT = 10.0
CHUNK = 64 * 1024


async def _read(stream: Any) -> bytes:
    try:
        return await stream.read(CHUNK)
    except trio.Cancelled:
        raise
    except Exception:  # libp2p raises StreamEOF / StreamReset instead of returning b""
        return b""


async def pipe(framed: FramedStream, tcp: trio.SocketStream) -> tuple[int, int]:
    """Copy bytes both ways until the container side closes or the peer goes away.

    Peer EOF half-closes the container side (it may still answer); container EOF or
    any error ends both directions. Returns (bytes to container, bytes to peer).
    """
    stream = framed.stream
    counts = [0, 0]

    async def to_container() -> None:
        head = framed.take_buffered()
        if head:
            await tcp.send_all(head)
            counts[0] += len(head)
        while True:
            data = await _read(stream)
            if not data:
                try:
                    await tcp.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()
                return
            await tcp.send_all(data)
            counts[0] += len(data)

    async def to_peer() -> None:
        while True:
            try:
                data = await tcp.receive_some(CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                nursery.cancel_scope.cancel()
                return
            await stream.write(data)
            counts[1] += len(data)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(to_container)
            nursery.start_soon(to_peer)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except* Exception as group:  # libp2p write to a reset stream: the peer left
        log.debug("event=tunnel_pipe_ended err=%r", group.exceptions[0])
    return counts[0], counts[1]


# client side -----------------------------------------------------------------------


class TunnelStream:
    """The client end of an authorized tunnel: ``read``/``write`` raw bytes."""

    def __init__(self, framed: FramedStream) -> None:
        self._framed = framed
        self._head = framed.take_buffered()

    async def read(self, n: int = CHUNK) -> bytes:
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        return await _read(self._framed.stream)

    async def write(self, data: bytes) -> None:
        await self._framed.stream.write(data)

    async def read_all(self, timeout: float = 10.0) -> bytes:
        out = bytearray()
        with trio.fail_after(timeout):
            while chunk := await self.read():
                out += chunk
        return bytes(out)


class TunnelRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@asynccontextmanager
async def open_tunnel(
    host: Any,
    provider_peer: Any,
    owner: Identity,
    domain: Domain,
    job_id: int,
    *,
    token_frame: dict | None = None,
) -> AsyncIterator[TunnelStream]:
    """Open ``/kaisar/tunnel/1`` to a provider as the job owner (``host`` is a KaisarHost).

    Raises TunnelRefused(reason) if the provider says no. ``token_frame`` overrides the
    token (tests of refusals).
    """
    frame = token_frame or tunnel_token(owner, domain, job_id, provider_peer.to_base58()).to_frame()
    async with host.open_stream(provider_peer, PROTOCOL_ID) as framed:
        await framed.send(frame)
        try:
            reply = await framed.recv(max_size=1024, timeout=TOKEN_TIMEOUT)
        except FrameError as exc:
            raise TunnelRefused(f"no answer: {exc}") from None
        if type(reply) is not dict or reply.get("ok") is not True:
            reason = reply.get("reason", "refused") if type(reply) is dict else "refused"
            raise TunnelRefused(str(reason))
        yield TunnelStream(framed)
