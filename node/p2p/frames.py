"""Length-prefixed msgpack frames over a byte stream.

Every stream protocol (`/kaisar/popw/1`, `/kaisar/deploy/1`, ...) speaks frames:
a 4-byte big-endian length, then that many bytes of msgpack. The length is checked
against the caller's limit *before* the body is read, every read has a deadline, and
a frame is never delimited by EOF (py-libp2p transports differ in EOF behaviour).

``FramedStream`` wraps anything with ``async read(n) -> bytes`` and
``async write(data)`` (a libp2p ``INetStream``, or the in-memory pair used in tests).
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

import msgpack
import trio

LEN = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB
DEFAULT_TIMEOUT = 10.0


class FrameError(Exception):
    """A frame could not be sent, read or decoded: oversized, truncated, timed out, reset or
    not msgpack."""


class ByteStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> Any: ...

    async def close(self) -> None: ...


def pack(obj: Any) -> bytes:
    """Canonical msgpack (bin type for bytes, no ext types)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, *, max_size: int = DEFAULT_MAX_FRAME) -> Any:
    """Decode msgpack with limits; any failure is a FrameError."""
    if len(data) > max_size:
        raise FrameError(f"frame of {len(data)} bytes exceeds limit {max_size}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=min(max_size, 1 << 16),
            max_map_len=min(max_size, 1 << 12),
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, ...)
        raise FrameError(f"not a msgpack frame: {type(exc).__name__}") from None


class FramedStream:
    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def send(self, obj: Any, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        body = pack(obj)
        with trio.move_on_after(timeout) as scope:
            try:
                await self.stream.write(LEN.pack(len(body)) + body)
            except trio.Cancelled:
                raise
            except Exception as exc:  # stream reset / closed by the peer (e.g. a limited stream)
                raise FrameError(f"stream closed: {type(exc).__name__}") from None
        if scope.cancelled_caught:
            raise FrameError("timed out sending a frame")

    async def recv(
        self, *, max_size: int = DEFAULT_MAX_FRAME, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        with trio.move_on_after(timeout) as scope:
            header = await self._read_exactly(LEN.size)
            (length,) = LEN.unpack(header)
            if length > max_size:
                raise FrameError(f"frame of {length} bytes exceeds limit {max_size}")
            body = await self._read_exactly(length)
        if scope.cancelled_caught:
            raise FrameError("timed out waiting for a frame")
        return unpack(body, max_size=max_size)

    async def _read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            try:
                chunk = await self.stream.read(max(n - len(self._buf), 65536))
            except trio.Cancelled:
                raise
            except Exception as exc:  # stream reset / closed by the peer
                raise FrameError(f"stream closed: {type(exc).__name__}") from None
            if not chunk:
                raise FrameError("stream closed mid-frame")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def take_buffered(self) -> bytes:
        """Bytes read ahead past the last frame; a protocol that switches from frames to
        a raw byte pipe (the tunnel) must hand these on first."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def close(self) -> None:
        try:
            await self.stream.close()
        except Exception:  # already reset; closing is best effort
            pass


class _MemoryByteStream:
    """One direction pair of trio memory channels acting as a byte stream (tests, simulation)."""

    def __init__(self, send: trio.MemorySendChannel, recv: trio.MemoryReceiveChannel) -> None:
        self._send = send
        self._recv = recv
        self._pending = b""

    async def read(self, n: int | None = None) -> bytes:
        if not self._pending:
            try:
                self._pending = await self._recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        n = len(self._pending) if n is None else n
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    async def write(self, data: bytes) -> None:
        try:
            await self._send.send(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionError("peer closed") from exc

    async def close(self) -> None:
        await self._send.aclose()
        await self._recv.aclose()


def memory_pair() -> tuple[FramedStream, FramedStream]:
    """Two connected FramedStreams in memory, for protocol tests without sockets."""
    a_send, b_recv = trio.open_memory_channel[bytes](64)
    b_send, a_recv = trio.open_memory_channel[bytes](64)
    return (
        FramedStream(_MemoryByteStream(a_send, a_recv)),
        FramedStream(_MemoryByteStream(b_send, b_recv)),
    )
