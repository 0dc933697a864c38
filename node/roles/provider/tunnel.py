"""``/kaisar/tunnel/1``: an owner-authorized byte pipe to a job container's port.

Frames, then raw bytes::

    client   -> provider  {action: "tunnel", job_id, nonce (32 B), expiry (unix s), sig (65 B),
                           [data: {nonce (32 B), ciphers: [name, ...]}]}
    provider -> client    {ok: false, reason}
                        | {ok: true}                                   bytes on this stream
                        | {ok: true, data: {port, ticket, secret, cipher}}

With ``data`` in the reply the client opens the direct data path
(``node.p2p.datapath``): a TCP connection to ``port`` on the provider's address of
this libp2p connection, bound to the one-time ``ticket`` and encrypted with keys derived
from ``secret`` (sent over this Noise-encrypted stream) and the client's ``nonce``.
If that fails the client sends ``{use: "stream"}`` here and the bytes use this stream.
In the direct case this stream stays open, unused, until the tunnel ends.

Both sides pipe with ``node.p2p.pipe.pipe`` (one set of half-close and back-pressure
rules). ``FramedStream.recv`` may have read bytes past the last frame into its buffer
(``take_buffered()``); those are handed on first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from node.eip712 import Domain
from node.identity import Identity
from node.p2p import datapath
from node.p2p.frames import FramedStream, FrameError
from node.p2p.pipe import CHUNK, ByteChannel, ChannelBroken, Libp2pChannel, PipeStats, pipe
from node.roles.provider.messages import AccessDenied, tunnel_token

log = logging.getLogger("kaisar.provider.tunnel")

PROTOCOL_ID = "/kaisar/tunnel/1"
TOKEN_MAX_BYTES = 640
TOKEN_TIMEOUT = 10.0
DATA_KEY = "data"
CLIENT_CIPHERS = ("aes256gcm", "chacha20poly1305")
DIRECT_RETRY_S = 600.0  # after a failed direct connection, use libp2p to that peer this long
_direct_failed: dict[str, float] = {}  # provider peer id -> time.monotonic() of the failure


@dataclass(frozen=True)
class Offer:
    """The client's request for the direct data path (its half of the key material)."""

    nonce: bytes
    ciphers: tuple[str, ...]


def take_offer(obj: Any) -> Offer | None:
    """Remove and check the optional ``data`` key of a tunnel token frame."""
    if type(obj) is not dict or DATA_KEY not in obj:
        return None
    raw = obj.pop(DATA_KEY)
    ok = (
        type(raw) is dict
        and set(raw) == {"nonce", "ciphers"}
        and type(raw["nonce"]) is bytes
        and len(raw["nonce"]) == datapath.NONCE_SIZE
        and type(raw["ciphers"]) is list
        and 0 < len(raw["ciphers"]) <= 8
        and all(type(c) is str and len(c) <= 32 for c in raw["ciphers"])
    )
    if not ok:
        raise AccessDenied("malformed data-path offer")
    return Offer(raw["nonce"], tuple(raw["ciphers"]))


def peer_bytes(peer: Any) -> bytes:
    return peer.to_bytes() if hasattr(peer, "to_bytes") else str(peer).encode()


# provider side ----------------------------------------------------------------------


@dataclass(eq=False)
class ServedTunnel:
    """What a provider's running tunnel exposes (tests, metrics): path and pipe stats."""

    job_id: int
    path: str = "libp2p"
    stats: PipeStats | None = None
    channel: Any = None

    def buffered(self) -> int:
        """Bytes the provider holds for this tunnel right now: the pipe's chunk in
        flight each way plus what the peer-side channel read ahead."""
        held = sum(self.stats.held) if self.stats else 0
        peek = getattr(self.channel, "buffered", None)
        return held + (peek() if peek else 0)


LIVE: set[ServedTunnel] = set()  # every provider tunnel in this process (tests, bench)


async def serve(
    framed: FramedStream,
    tcp: trio.SocketStream,
    offer: Offer | None,
    *,
    job_id: int,
    client_peer: Any,
    provider_peer: Any,
    server: datapath.DataPathServer | None,
) -> PipeStats:
    """Answer an authorized tunnel request and pipe until it ends (caller closes ``tcp``)."""
    served = ServedTunnel(job_id)
    cipher = datapath.pick_cipher(list(offer.ciphers)) if offer else None
    if offer is None or cipher is None or server is None or not server.listening:
        await framed.send({"ok": True})
        channel: ByteChannel = Libp2pChannel(framed.stream, framed.take_buffered())
    else:
        bind = datapath.binding(job_id, peer_bytes(client_peer), peer_bytes(provider_peer))
        ticket, secret, arrivals = server.issue(cipher, offer.nonce, bind)
        await framed.send(
            {"ok": True, DATA_KEY: {"port": server.port, "ticket": ticket, "secret": secret, "cipher": cipher}}
        )
        try:
            got = await _await_path(framed, arrivals)
        finally:
            server.revoke(ticket)
            try:  # a direct connection that arrived too late (timeout, or after the fallback)
                late = arrivals.receive_nowait()
                with trio.CancelScope(shield=True):
                    await late.aclose()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                pass
        if got is None:
            log.info("event=tunnel_no_data_path job=%d peer=%s", job_id, client_peer)
            return PipeStats(ended_by="no data path")
        channel = got
        served.path = "direct" if isinstance(got, datapath.SecureChannel) else "libp2p"
    served.stats, served.channel = PipeStats(), channel
    LIVE.add(served)
    try:
        return await pipe(channel, tcp, stats=served.stats)
    finally:
        LIVE.discard(served)
        # The direct connection is always closed here; the libp2p stream is reset unless
        # both directions ended cleanly (a half-close would leave a client's blocked
        # write waiting for window forever once the job ended).
        if isinstance(channel, datapath.SecureChannel) or served.stats.ended_by != "eof":
            with trio.CancelScope(shield=True):
                await channel.aclose()


async def _await_path(framed: FramedStream, arrivals: trio.MemoryReceiveChannel) -> ByteChannel | None:
    """The authenticated direct connection, or this stream if the client asks for it."""
    result: list[ByteChannel] = []

    async def direct() -> None:
        try:
            result.append(await arrivals.receive())
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return
        nursery.cancel_scope.cancel()

    async def fallback() -> None:
        try:
            reply = await framed.recv(max_size=256, timeout=datapath.TICKET_TTL)
        except FrameError:
            return
        if reply == {"use": "stream"}:
            result.append(Libp2pChannel(framed.stream, framed.take_buffered()))
            nursery.cancel_scope.cancel()

    with trio.move_on_after(datapath.TICKET_TTL):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(direct)
            nursery.start_soon(fallback)
    for extra in result[1:]:  # both answers in the same scheduler round: keep the first
        if isinstance(extra, datapath.SecureChannel):
            with trio.CancelScope(shield=True):
                await extra.aclose()
    return result[0] if result else None


# client side -----------------------------------------------------------------------


class TunnelStream:
    """The client end of an authorized tunnel: a ByteChannel plus ``read``/``write``.

    ``path`` is ``"direct"`` (the encrypted data connection) or ``"libp2p"``. ``read``
    returns ``b""`` at the end of the tunnel, clean or not (``broken`` tells which).
    """

    def __init__(self, framed: FramedStream, channel: ByteChannel, path: str) -> None:
        self._framed = framed
        self.channel = channel
        self.path = path
        self.broken = False

    async def receive_some(self, max_bytes: int = CHUNK) -> bytes:
        return await self.channel.receive_some(max_bytes)

    async def send_all(self, data: bytes | memoryview) -> None:
        await self.channel.send_all(data)

    async def send_eof(self) -> None:
        await self.channel.send_eof()

    async def aclose(self) -> None:
        await self.channel.aclose()

    async def read(self, n: int = CHUNK) -> bytes:
        try:
            return bytes(await self.channel.receive_some(n))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.broken = True
            return b""

    async def write(self, data: bytes) -> None:
        await self.channel.send_all(data)

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


def _remote_host(framed: FramedStream) -> str | None:
    from node.p2p.dial import stream_is_relayed

    if stream_is_relayed(framed.stream):  # its remote address is the relay's, not the provider's
        return None
    get = getattr(framed.stream, "get_remote_address", None)
    try:
        addr = get() if get else None
    except Exception:
        return None
    return addr[0] if addr else None


@asynccontextmanager
async def open_tunnel(
    host: Any,
    provider_peer: Any,
    owner: Identity,
    domain: Domain,
    job_id: int,
    *,
    token_frame: dict | None = None,
    data_path: str = "auto",
    ciphers: tuple[str, ...] = CLIENT_CIPHERS,
) -> AsyncIterator[TunnelStream]:
    """Open ``/kaisar/tunnel/1`` to a provider as the job owner (``host`` is a KaisarHost).

    ``data_path``: ``"auto"`` asks for the direct data path and falls back to the
    libp2p stream; ``"stream"`` never asks. ``ciphers``: the direct path's AEADs in
    order of preference (the provider takes the first it supports). Raises TunnelRefused(reason) if the
    provider says no. ``token_frame`` overrides the token (tests of refusals).
    """
    frame = dict(token_frame or tunnel_token(owner, domain, job_id, provider_peer.to_base58()).to_frame())
    client_nonce = os.urandom(datapath.NONCE_SIZE)
    failed_at = _direct_failed.get(str(provider_peer))
    if failed_at is not None and time.monotonic() - failed_at < DIRECT_RETRY_S:
        data_path = "stream"  # do not make every connection wait for the same timeout
    if data_path == "auto":
        frame[DATA_KEY] = {"nonce": client_nonce, "ciphers": list(ciphers)}
    async with host.open_stream(provider_peer, PROTOCOL_ID) as framed:
        await framed.send(frame)
        try:
            reply = await framed.recv(max_size=1024, timeout=TOKEN_TIMEOUT)
        except FrameError as exc:
            raise TunnelRefused(f"no answer: {exc}") from None
        if type(reply) is not dict or reply.get("ok") is not True:
            reason = reply.get("reason", "refused") if type(reply) is dict else "refused"
            raise TunnelRefused(str(reason))
        tunnel = await _choose_path(framed, reply.get(DATA_KEY), client_nonce, host, provider_peer, job_id)
        try:
            yield tunnel
        finally:
            if tunnel.path == "direct":  # the libp2p stream is closed by open_stream
                with trio.CancelScope(shield=True):
                    await tunnel.aclose()


async def _choose_path(
    framed: FramedStream, data: Any, client_nonce: bytes, host: Any, provider_peer: Any, job_id: int
) -> TunnelStream:
    if data is not None:
        remote = _remote_host(framed)
        try:
            ok = (
                type(data) is dict
                and type(data.get("port")) is int
                and 0 < data["port"] < 65536
                and type(data.get("ticket")) is bytes
                and len(data["ticket"]) == datapath.TICKET_SIZE
                and type(data.get("secret")) is bytes
                and len(data["secret"]) == datapath.SECRET_SIZE
                and data.get("cipher") in CLIENT_CIPHERS
            )
            if not ok:
                raise datapath.DataPathError("malformed data-path answer")
            if remote is None:
                raise datapath.DataPathError("no transport address for this connection")
            bind = datapath.binding(job_id, peer_bytes(host.peer_id), peer_bytes(provider_peer))
            keys = datapath.derive_keys(data["cipher"], data["secret"], client_nonce, data["ticket"], bind)
            channel = await datapath.connect(remote, data["port"], data["ticket"], keys)
            return TunnelStream(framed, channel, "direct")
        except (datapath.DataPathError, ChannelBroken) as exc:
            log.info("event=tunnel_data_path_fallback job=%d err=%s", job_id, exc)
            if remote is not None:  # a relayed connection says nothing about the direct port
                _direct_failed[str(provider_peer)] = time.monotonic()
            await framed.send({"use": "stream"})
    return TunnelStream(framed, Libp2pChannel(framed.stream, framed.take_buffered()), "libp2p")
