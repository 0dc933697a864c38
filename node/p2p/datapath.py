"""The tunnel's direct data path: one TCP connection, AEAD records, bound to a ticket.

Why: a tunnel's bytes through py-libp2p's Noise + Yamux layers in Python reach
~80-365 MiB/s and ~0.85-1 ms per round trip (docs/BENCHMARKS.md, Tunnel), far from
``ssh -L``. The libp2p stream stays the *control* channel: it is Noise-authenticated
to the provider's peer id, carries the owner's signed token, and over it the provider
hands the client fresh key material and a one-time ticket. The bytes then go over a
dedicated TCP connection to the provider's data listener, in large encrypted records.
When that connection cannot be made (relayed peers, a firewall), the tunnel uses the
libp2p stream itself. Security argument: docs/ARCHITECTURE.md, "Tunnel data path".

Wire format of a data connection::

    client -> provider  MAGIC (4 B) | ticket (16 B) | HELLO record
    provider -> client  HELLO record
    then DATA records both ways; EOF record = half-close; TCP end without an EOF
    record is a broken (possibly truncated) tunnel, never a clean end.

    record = type (1 B) | plaintext length (4 B, big-endian) | AEAD(ciphertext + 16 B tag)
    nonce  = 12-byte big-endian record counter of that direction (0, 1, 2, ...)
    aad    = the 5 header bytes

Each direction has its own key, so (key, nonce) never repeats; the implicit counter
makes a replayed, dropped, reordered or spliced record fail authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from node.p2p.pipe import ChannelBroken, PipeStats

log = logging.getLogger("kaisar.p2p.datapath")

MAGIC = b"KTD1"
TICKET_SIZE = 16
SECRET_SIZE = 32
NONCE_SIZE = 32
TAG = 16
HEADER = struct.Struct(">BI")
T_HELLO, T_DATA, T_EOF = 1, 2, 3
RECORD_MAX = 1 << 20  # plaintext bytes per record
MAX_RECORDS = 1 << 48  # per key; a tunnel ends long before
TICKET_TTL = 10.0  # seconds a ticket waits for its data connection
HANDSHAKE_TIMEOUT = 5.0
MAX_HANDSHAKES = 64  # unauthenticated data connections at once
CIPHERS: dict[str, Callable[[bytes], Any]] = {
    "aes256gcm": AESGCM,  # AES-NI: ~6 GB/s here
    "chacha20poly1305": ChaCha20Poly1305,  # ~1.5 GB/s; the choice without AES hardware
}
INFO = b"kaisar/tunnel-data/1"
RELAY_THREADS = trio.CapacityLimiter(4096)  # 2 per direct tunnel being piped


class DataPathError(Exception):
    """The direct connection could not be set up (the caller falls back)."""


@dataclass(frozen=True)
class Keys:
    cipher: str
    c2p: bytes  # client -> provider
    p2c: bytes  # provider -> client


def derive_keys(
    cipher: str, secret: bytes, client_nonce: bytes, ticket: bytes, binding: bytes
) -> Keys:
    """HKDF-SHA256: the provider's fresh secret, salted with the client's nonce, bound to
    the ticket and to (job, client peer, provider peer) via ``binding``."""
    prk = hmac.new(client_nonce, secret, hashlib.sha256).digest()
    info = INFO + b"|" + cipher.encode() + b"|" + ticket + b"|" + binding
    t1 = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(prk, t1 + info + b"\x02", hashlib.sha256).digest()
    return Keys(cipher, t1, t2)


def binding(job_id: int, client_peer: bytes, provider_peer: bytes) -> bytes:
    return job_id.to_bytes(32, "big") + hashlib.sha256(client_peer).digest() + hashlib.sha256(provider_peer).digest()


def pick_cipher(offered: list[str]) -> str | None:
    return next((c for c in offered if c in CIPHERS), None)


class _Sealer:
    def __init__(self, cipher: str, key: bytes) -> None:
        self._aead = CIPHERS[cipher](key)
        self._n = 0

    def seal(self, rtype: int, data: bytes | bytearray | memoryview) -> bytes:
        if self._n >= MAX_RECORDS:
            raise ChannelBroken("record counter exhausted")
        header = HEADER.pack(rtype, len(data))
        ct = self._aead.encrypt(self._n.to_bytes(12, "big"), data, header)
        self._n += 1
        return header + ct

    def open(self, header: bytes | memoryview, ct: memoryview) -> bytes:
        if self._n >= MAX_RECORDS:
            raise ChannelBroken("record counter exhausted")
        try:
            out = self._aead.decrypt(self._n.to_bytes(12, "big"), ct, bytes(header))
        except Exception:  # InvalidTag: tampered, replayed, reordered or wrong key
            raise ChannelBroken("record does not authenticate") from None
        self._n += 1
        return out


class SecureChannel:
    """AEAD records over a TCP ``trio.SocketStream``: a ByteChannel (node.p2p.pipe)."""

    def __init__(self, stream: trio.SocketStream, send_key: _Sealer, recv_key: _Sealer) -> None:
        self.stream = stream
        self._sock = stream.socket
        self._tx = send_key
        self._rx = recv_key
        self._buf = bytearray(2 * (RECORD_MAX + HEADER.size + TAG))
        self._start = 0
        self._end = 0
        self._pending = b""
        self._eof = False
        self._send_lock = trio.StrictFIFOLock()
        self.max_buffered = 0  # most ciphertext bytes read ahead (back-pressure check)
        self.closed = trio.Event()

    @classmethod
    def for_client(cls, stream: trio.SocketStream, keys: Keys) -> SecureChannel:
        return cls(stream, _Sealer(keys.cipher, keys.c2p), _Sealer(keys.cipher, keys.p2c))

    @classmethod
    def for_provider(cls, stream: trio.SocketStream, keys: Keys) -> SecureChannel:
        return cls(stream, _Sealer(keys.cipher, keys.p2c), _Sealer(keys.cipher, keys.c2p))

    def buffered(self) -> int:
        return self._end - self._start + len(self._pending)

    async def _fill(self, need: int) -> bool:
        """At least ``need`` bytes between start and end; False at TCP EOF."""
        buf = self._buf
        while self._end - self._start < need:
            if self._start and len(buf) - self._start < need:
                n = self._end - self._start
                buf[:n] = buf[self._start : self._end]
                self._start, self._end = 0, n
            try:
                got = await self._sock.recv_into(memoryview(buf)[self._end :])
            except OSError as exc:
                raise ChannelBroken(f"data connection failed: {exc}") from None
            if not got:
                return False
            self._end += got
            if self._end - self._start > self.max_buffered:
                self.max_buffered = self._end - self._start
        return True

    async def read_record(self) -> tuple[int, bytes]:
        if not await self._fill(HEADER.size):
            raise ChannelBroken("data connection ended without an EOF record")
        rtype, length = HEADER.unpack_from(self._buf, self._start)
        if length > RECORD_MAX or rtype not in (T_HELLO, T_DATA, T_EOF):
            raise ChannelBroken("bad record header")
        total = HEADER.size + length + TAG
        if not await self._fill(total):
            raise ChannelBroken("data connection ended mid-record")
        view = memoryview(self._buf)
        s = self._start
        try:
            plain = self._rx.open(view[s : s + HEADER.size], view[s + HEADER.size : s + total])
        finally:
            view.release()
        self._start += total
        if self._start == self._end:
            self._start = self._end = 0
        return rtype, plain

    async def receive_some(self, max_bytes: int = RECORD_MAX) -> bytes:
        if self._pending:
            out, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
            return out
        while not self._eof:
            rtype, plain = await self.read_record()
            if rtype == T_EOF:
                self._eof = True
                return b""
            if rtype != T_DATA:
                raise ChannelBroken("unexpected record type")
            if plain:
                if len(plain) > max_bytes:
                    self._pending = plain[max_bytes:]
                    return plain[:max_bytes]
                return plain
        return b""

    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ChannelBroken(f"data connection failed: {type(exc).__name__}") from None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            view = memoryview(data)
            for i in range(0, len(view), RECORD_MAX):
                await self._send(self._tx.seal(T_DATA, view[i : i + RECORD_MAX]))

    async def send_hello(self) -> None:
        async with self._send_lock:
            await self._send(self._tx.seal(T_HELLO, b""))

    async def send_eof(self) -> None:
        async with self._send_lock:
            await self._send(self._tx.seal(T_EOF, b""))
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def aclose(self) -> None:
        self.closed.set()
        await self.stream.aclose()

    # the relay: node.p2p.pipe.pipe() hands a (TCP, SecureChannel) pair to relay() ----

    def _fill_sync(self, sock: socket.socket, need: int) -> bool:
        buf = self._buf
        while self._end - self._start < need:
            if self._start and len(buf) - self._start < need:
                n = self._end - self._start
                buf[:n] = buf[self._start : self._end]
                self._start, self._end = 0, n
            got = sock.recv_into(memoryview(buf)[self._end :])
            if not got:
                return False
            self._end += got
            if self._end - self._start > self.max_buffered:
                self.max_buffered = self._end - self._start
        return True

    def _read_record_sync(self, sock: socket.socket) -> tuple[int, bytes]:
        if not self._fill_sync(sock, HEADER.size):
            raise ChannelBroken("data connection ended without an EOF record")
        rtype, length = HEADER.unpack_from(self._buf, self._start)
        if length > RECORD_MAX or rtype not in (T_HELLO, T_DATA, T_EOF):
            raise ChannelBroken("bad record header")
        total = HEADER.size + length + TAG
        if not self._fill_sync(sock, total):
            raise ChannelBroken("data connection ended mid-record")
        s = self._start
        with memoryview(self._buf) as view:
            plain = self._rx.open(view[s : s + HEADER.size], view[s + HEADER.size : s + total])
        self._start += total
        if self._start == self._end:
            self._start = self._end = 0
        return rtype, plain

    async def relay(self, plain: trio.SocketStream, stats: PipeStats, *, secure_is_a: bool) -> None:
        """``pipe(plain, self)`` with each direction in its own thread on blocking sockets.

        Same rules as ``node.p2p.pipe.pipe`` (EOF half-closes the other side, an error
        ends both, one chunk held per direction), without an event-loop round per
        chunk (docs/BENCHMARKS.md, Tunnel).
        """
        ps = socket.socket(fileno=os.dup(plain.socket.fileno()))
        ss = socket.socket(fileno=os.dup(self._sock.fileno()))
        ps.setblocking(True)  # the duplicate shares the open file (and its O_NONBLOCK)
        ss.setblocking(True)
        to_secure, to_plain = (1, 0) if secure_is_a else (0, 1)  # stats index per direction
        head, self._pending = self._pending, b""

        def count(way: int, n: int) -> None:
            if way == 0:
                stats.a_to_b += n
            else:
                stats.b_to_a += n

        def up() -> None:  # plain -> secure
            try:
                while True:
                    data = ps.recv(RECORD_MAX)
                    if not data:
                        ss.sendall(self._tx.seal(T_EOF, b""))
                        ss.shutdown(socket.SHUT_WR)
                        return
                    stats.held[to_secure] = len(data)
                    stats.max_held = max(stats.max_held, len(data))
                    ss.sendall(self._tx.seal(T_DATA, data))
                    stats.held[to_secure] = 0
                    count(to_secure, len(data))
            except OSError as exc:
                raise ChannelBroken(f"relay: {exc}") from None

        def down() -> None:  # secure -> plain
            try:
                if head:
                    ps.sendall(head)
                    count(to_plain, len(head))
                while True:
                    rtype, data = self._read_record_sync(ss)
                    if rtype == T_EOF:
                        ps.shutdown(socket.SHUT_WR)
                        return
                    if rtype != T_DATA:
                        raise ChannelBroken("unexpected record type")
                    stats.held[to_plain] = len(data)
                    stats.max_held = max(stats.max_held, len(data))
                    ps.sendall(data)
                    stats.held[to_plain] = 0
                    count(to_plain, len(data))
            except OSError as exc:
                raise ChannelBroken(f"relay: {exc}") from None

        async def run(fn: Callable[[], None]) -> None:
            # trio-stubs (trio_typing) predate abandon_on_cancel, trio 0.35 has only it
            await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=RELAY_THREADS)  # type: ignore[call-arg]

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, up)
                nursery.start_soon(run, down)
        finally:
            for sock in (ps, ss):  # wakes a thread still blocked (error or cancel), then frees
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


def listen_host(listen: Any) -> str:
    """The IP of the first /ip4 or /ip6 p2p listen address: the data listener binds there."""
    for addr in listen:
        parts = str(addr).split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            return parts[2]
    return "127.0.0.1"


# provider side ---------------------------------------------------------------------


@dataclass
class _Pending:
    keys: Keys
    expires: float
    delivered: trio.MemorySendChannel = field(repr=False)


class DataPathServer:
    """The provider's data listener and its one-time tickets.

    ``issue(...)`` (called by the authorized ``/kaisar/tunnel/1`` handler) returns a
    ticket, the secret and a receive channel on which the authenticated
    ``SecureChannel`` arrives. A ticket is used at most once and only within
    TICKET_TTL; an unauthenticated connection gets HANDSHAKE_TIMEOUT and at most
    MAX_HANDSHAKES run at once.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.listen_port = port
        self.port = 0  # bound port while serving, 0 otherwise
        self._tickets: dict[bytes, _Pending] = {}
        self._handshakes = trio.CapacityLimiter(MAX_HANDSHAKES)
        self.refused = 0
        self.accepted = 0

    @property
    def listening(self) -> bool:
        return self.port != 0

    async def run(self) -> None:
        """``serve`` that never fails its caller: without a listener tunnels use libp2p."""
        try:
            await self.serve()
        except OSError as exc:
            log.warning("event=datapath_unavailable addr=%s:%d err=%s", self.host, self.listen_port, exc)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.listen_port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("event=datapath_listening addr=%s:%d", self.host, self.port)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(self.port)
                await trio.serve_listeners(self._on_connection, listeners, handler_nursery=nursery)
        finally:
            self.port = 0

    def issue(
        self, cipher: str, client_nonce: bytes, bind: bytes
    ) -> tuple[bytes, bytes, trio.MemoryReceiveChannel]:
        now = trio.current_time()
        for t in [t for t, p in self._tickets.items() if p.expires <= now]:
            self._tickets.pop(t).delivered.close()
        ticket, secret = os.urandom(TICKET_SIZE), os.urandom(SECRET_SIZE)
        send, recv = trio.open_memory_channel[SecureChannel](1)
        keys = derive_keys(cipher, secret, client_nonce, ticket, bind)
        self._tickets[ticket] = _Pending(keys, now + TICKET_TTL, send)
        return ticket, secret, recv

    def revoke(self, ticket: bytes) -> None:
        pending = self._tickets.pop(ticket, None)
        if pending is not None:
            pending.delivered.close()

    async def _on_connection(self, stream: trio.SocketStream) -> None:
        handed_over: SecureChannel | None = None
        try:
            async with self._handshakes:
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    handed_over = await self._handshake(stream)
            if handed_over is not None:  # trio closes the stream when this handler returns
                await handed_over.closed.wait()
        finally:
            if not handed_over:
                self.refused += 1
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _handshake(self, stream: trio.SocketStream) -> SecureChannel | None:
        head = bytearray()
        while len(head) < len(MAGIC) + TICKET_SIZE:
            try:
                chunk = await stream.receive_some(len(MAGIC) + TICKET_SIZE - len(head))
            except (trio.BrokenResourceError, OSError):
                return None
            if not chunk:
                return None
            head += chunk
        if bytes(head[:4]) != MAGIC:
            log.info("event=datapath_refused reason=magic")
            return None
        ticket = bytes(head[4:])
        pending = self._tickets.get(ticket)
        if pending is None or pending.expires <= trio.current_time():
            log.info("event=datapath_refused reason=unknown_or_expired_ticket")
            return None
        channel = SecureChannel.for_provider(stream, pending.keys)
        try:
            rtype, plain = await channel.read_record()
        except ChannelBroken as exc:
            log.info("event=datapath_refused reason=hello err=%s", exc)
            return None  # the ticket stays for its owner (one who has the keys)
        if rtype != T_HELLO or plain:
            return None
        if self._tickets.pop(ticket, None) is not pending:  # used once
            return None
        try:
            await channel.send_hello()
            pending.delivered.send_nowait(channel)
        except (ChannelBroken, trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            return None
        self.accepted += 1
        return channel


# client side -----------------------------------------------------------------------


async def connect(
    host: str, port: int, ticket: bytes, keys: Keys, *, timeout: float = HANDSHAKE_TIMEOUT
) -> SecureChannel:
    """Open the data connection and check the provider's HELLO; DataPathError if not."""
    stream: trio.SocketStream | None = None
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
            channel = SecureChannel.for_client(stream, keys)
            await stream.send_all(MAGIC + ticket + channel._tx.seal(T_HELLO, b""))
            rtype, plain = await channel.read_record()
            if rtype != T_HELLO or plain:
                raise ChannelBroken("no hello")
            return channel
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
        raise DataPathError(f"direct data path to {host}:{port} failed: {exc or type(exc).__name__}") from None
