"""One byte pipe for every tunnel hop (client's local port, provider's container port).

A ``ByteChannel`` is anything with trio's half-closable stream shape:
``receive_some(n)`` (``b""`` at a clean end of input), ``send_all(data)``,
``send_eof()`` (half-close: we send no more, we still read) and ``aclose()``.
``trio.SocketStream`` is one as is; ``Libp2pChannel`` adapts a libp2p stream and
``node.p2p.datapath.SecureChannel`` is the tunnel's direct, encrypted connection.

The rules (the same on both sides of a tunnel, like ``ssh -L`` channels and TCP):

- a clean end of input on one side half-closes the other side (``send_eof``); the
  other direction keeps running, so a container can answer after the client's EOF
  and a client can keep sending after the container's EOF;
- the pipe ends when both directions ended cleanly, or at once when either side
  fails (reset, broken connection, a record that does not authenticate): then both
  directions stop and the caller closes both channels;
- back-pressure: each direction holds at most one chunk (``chunk`` bytes) between
  reading it and the destination accepting it, so a slow reader stops the writer
  instead of growing a buffer. ``PipeStats.max_held`` is that high-water mark.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

log = logging.getLogger("kaisar.p2p.pipe")

CHUNK = 1 << 20


class ByteChannel(Protocol):
    async def receive_some(self, max_bytes: int) -> bytes: ...

    async def send_all(self, data: bytes | memoryview) -> None: ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...


class ChannelBroken(trio.BrokenResourceError):
    """The other end went away without a clean end (reset, truncation, bad record)."""


@dataclass
class PipeStats:
    """Bytes each way and the most bytes one direction held at once (back-pressure)."""

    a_to_b: int = 0
    b_to_a: int = 0
    held: list[int] = field(default_factory=lambda: [0, 0])
    max_held: int = 0
    ended_by: str = ""  # "eof" (both directions ended cleanly) or the error's type name


async def pipe(a: ByteChannel, b: ByteChannel, *, chunk: int = CHUNK, stats: PipeStats | None = None) -> PipeStats:
    """Copy ``a <-> b`` under the rules above; never raises for a peer's failure."""
    st = stats if stats is not None else PipeStats()
    if isinstance(a, trio.SocketStream) and hasattr(b, "relay"):
        return await _relay(b, a, st, secure_is_a=False)
    if isinstance(b, trio.SocketStream) and hasattr(a, "relay"):
        return await _relay(a, b, st, secure_is_a=True)

    async def copy(src: ByteChannel, dst: ByteChannel, way: int) -> None:
        while True:
            data = await src.receive_some(chunk)
            if not data:
                await dst.send_eof()
                return
            n = len(data)
            st.held[way] = n
            if n > st.max_held:
                st.max_held = n
            await dst.send_all(data)
            st.held[way] = 0
            if way == 0:
                st.a_to_b += n
            else:
                st.b_to_a += n

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, a, b, 0)
            nursery.start_soon(copy, b, a, 1)
        st.ended_by = "eof"
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
        st.ended_by = type(group.exceptions[0]).__name__
    except* Exception as group:  # a libp2p stream error not mapped by Libp2pChannel
        st.ended_by = type(group.exceptions[0]).__name__
        log.debug("event=pipe_ended err=%r", group.exceptions[0])
    st.held = [0, 0]
    return st


async def _relay(secure: Any, plain: trio.SocketStream, st: PipeStats, *, secure_is_a: bool) -> PipeStats:
    """A channel that can relay itself (``datapath.SecureChannel``: threads, blocking I/O)."""
    try:
        await secure.relay(plain, st, secure_is_a=secure_is_a)
        st.ended_by = "eof"
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
        st.ended_by = type(group.exceptions[0]).__name__
    st.held = [0, 0]
    return st


class Libp2pChannel:
    """A libp2p stream (Noise + Yamux) as a ByteChannel.

    ``head``: bytes already read past a handshake frame (``FramedStream.take_buffered``),
    returned first. EOF is ``b""``; a reset or any other stream error is ChannelBroken.
    ``send_eof`` is the yamux half-close (``close()`` sends FIN, reading goes on).
    """

    def __init__(self, stream: Any, head: bytes = b"") -> None:
        self.stream = stream
        self._head = head
        self._eof = False

    async def receive_some(self, max_bytes: int) -> bytes:
        if self._head:
            out, self._head = self._head[:max_bytes], self._head[max_bytes:]
            return out
        if self._eof:
            return b""
        try:
            data = await self.stream.read(max_bytes)
        except trio.Cancelled:
            raise
        except Exception as exc:
            from libp2p.network.stream.exceptions import StreamEOF

            if isinstance(exc, StreamEOF):
                self._eof = True
                return b""
            raise ChannelBroken(f"libp2p stream failed: {type(exc).__name__}") from None
        if not data:
            self._eof = True
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.write(bytes(data) if not isinstance(data, bytes) else data)
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise ChannelBroken(f"libp2p stream failed: {type(exc).__name__}") from None

    async def send_eof(self) -> None:
        try:
            await self.stream.close()
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise ChannelBroken(f"libp2p stream failed: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        try:
            await self.stream.reset()
        except Exception:  # already gone; closing is best effort
            pass

    def buffered(self) -> int:
        """Bytes yamux holds for us that we have not read (bounded by its window)."""
        muxed = getattr(self.stream, "muxed_stream", None)
        conn = getattr(muxed, "conn", None)
        bufs = getattr(conn, "stream_buffers", None)
        try:
            return len(bufs[muxed.stream_id]) if bufs is not None and muxed is not None else 0
        except Exception:
            return 0
