"""The tunnel's pipe rules and the direct data path's guards, on real loopback sockets.

Each guard test fails if its guard is removed: unknown/expired ticket, one-time use,
key possession (HELLO must authenticate), key binding to the client's peer id, record
authentication (tamper, replay, reorder), truncation without an EOF record.
"""

from __future__ import annotations

import functools
import hashlib
import os

import trio

from node.p2p import datapath as dp
from node.p2p.pipe import ChannelBroken, PipeStats, pipe

CIPHER = "aes256gcm"


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def read_until_eof(ch, limit: int = 1 << 30) -> bytes:
    out = bytearray()
    while data := await ch.receive_some(1 << 20):
        out += data
        assert len(out) <= limit
    return bytes(out)


def keys_for(server: dp.DataPathServer, bind: bytes = b"job|client|provider"):
    nonce = os.urandom(dp.NONCE_SIZE)
    ticket, secret, arrivals = server.issue(CIPHER, nonce, bind)
    return ticket, dp.derive_keys(CIPHER, secret, nonce, ticket, bind), arrivals


async def raw_hello(port: int, ticket: bytes, keys: dp.Keys) -> bytes:
    """The bytes a client sends first (magic, ticket, HELLO record)."""
    return dp.MAGIC + ticket + dp._Sealer(keys.cipher, keys.c2p).seal(dp.T_HELLO, b"")


async def send_and_expect_close(port: int, first: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(first)
    try:
        with trio.fail_after(dp.HANDSHAKE_TIMEOUT + 2):
            got = await read_until_eof(stream)
    except trio.BrokenResourceError:  # closed with our bytes unread: a reset
        got = b""
    await stream.aclose()
    return got


async def test_pipe_half_close_both_ways_and_counts():
    # a <-> b: EOF from a reaches b as EOF while b -> a keeps flowing, and vice versa.
    a_out, a_in = await tcp_pair()
    b_in, b_out = await tcp_pair()
    stats = PipeStats()
    async with trio.open_nursery() as n:
        n.start_soon(functools.partial(pipe, a_in, b_in, stats=stats))
        await a_out.send_all(b"request")
        await a_out.send_eof()
        assert await read_until_eof(b_out) == b"request"  # a's EOF arrived as EOF
        await b_out.send_all(b"answer after the client's EOF")
        await b_out.send_eof()
        assert await read_until_eof(a_out) == b"answer after the client's EOF"
    assert (stats.a_to_b, stats.b_to_a, stats.ended_by) == (7, 29, "eof")


async def test_pipe_error_on_one_side_ends_both():
    a_out, a_in = await tcp_pair()
    b_in, b_out = await tcp_pair()

    class Resets:
        async def receive_some(self, n):
            raise ChannelBroken("reset")

        async def send_all(self, data):
            pass

        async def send_eof(self):
            pass

        async def aclose(self):
            pass

    with trio.fail_after(5):
        st = await pipe(a_in, Resets())
    assert st.ended_by == "ChannelBroken"


async def direct_pair(server: dp.DataPathServer):
    ticket, keys, arrivals = keys_for(server)
    client = await dp.connect("127.0.0.1", server.port, ticket, keys)
    with trio.fail_after(5):
        provider = await arrivals.receive()
    return client, provider


async def test_direct_path_large_transfer_both_ways_through_the_relay():
    # client channel <-> provider relay <-> a TCP "container" that echoes.
    server = dp.DataPathServer()
    payload = os.urandom(24 << 20)
    async with trio.open_nursery() as n:
        await n.start(server.serve)
        client, provider = await direct_pair(server)
        box_side, relay_side = await tcp_pair()

        async def echo() -> None:
            while data := await box_side.receive_some(1 << 20):
                await box_side.send_all(data)
            await box_side.send_eof()

        n.start_soon(echo)
        n.start_soon(pipe, provider, relay_side)

        async def send() -> None:
            view = memoryview(payload)
            for i in range(0, len(view), 300_001):  # not aligned with records
                await client.send_all(view[i : i + 300_001])
            await client.send_eof()

        n.start_soon(send)
        with trio.fail_after(60):
            back = await read_until_eof(client)
        assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
        n.cancel_scope.cancel()


async def test_unknown_expired_and_replayed_tickets_are_refused():
    server = dp.DataPathServer()
    async with trio.open_nursery() as n:
        await n.start(server.serve)
        # wrong ticket
        ticket, keys, arrivals = keys_for(server)
        assert await send_and_expect_close(server.port, await raw_hello(server.port, os.urandom(16), keys)) == b""
        assert server.refused == 1 and server.accepted == 0
        # the right one works once ...
        hello = await raw_hello(server.port, ticket, keys)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(hello)
        with trio.fail_after(5):
            provider = await arrivals.receive()
        assert server.accepted == 1
        # ... and the same bytes again (a replay) are refused: the ticket is spent
        assert await send_and_expect_close(server.port, hello) == b""
        assert server.accepted == 1 and server.refused == 2
        await provider.aclose()
        await stream.aclose()
        # an expired ticket
        ticket, keys, _ = keys_for(server)
        server._tickets[ticket].expires = trio.current_time() - 1
        assert await send_and_expect_close(server.port, await raw_hello(server.port, ticket, keys)) == b""
        assert server.accepted == 1
        n.cancel_scope.cancel()


async def test_hello_needs_the_keys_bound_to_the_client_peer():
    server = dp.DataPathServer()
    async with trio.open_nursery() as n:
        await n.start(server.serve)
        nonce = os.urandom(dp.NONCE_SIZE)
        mine = dp.binding(7, b"client-peer", b"provider-peer")
        ticket, secret, arrivals = server.issue(CIPHER, nonce, mine)
        # another peer that learned ticket and secret derives other keys (binding differs)
        other = dp.derive_keys(CIPHER, secret, nonce, ticket, dp.binding(7, b"other-peer", b"provider-peer"))
        assert await send_and_expect_close(server.port, await raw_hello(server.port, ticket, other)) == b""
        # someone with only the ticket (sniffed on the wire) and made-up keys
        guess = dp.derive_keys(CIPHER, os.urandom(32), nonce, ticket, mine)
        assert await send_and_expect_close(server.port, await raw_hello(server.port, ticket, guess)) == b""
        assert server.accepted == 0
        # the rightful client still gets in with the same ticket afterwards
        keys = dp.derive_keys(CIPHER, secret, nonce, ticket, mine)
        client = await dp.connect("127.0.0.1", server.port, ticket, keys)
        with trio.fail_after(5):
            await arrivals.receive()
        assert server.accepted == 1
        await client.aclose()
        n.cancel_scope.cancel()


async def test_tampered_replayed_and_truncated_records_break_the_channel():
    for attack in ("flip", "replay", "truncate"):
        server = dp.DataPathServer()
        async with trio.open_nursery() as n:
            await n.start(server.serve)
            ticket, keys, arrivals = keys_for(server)
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            sealer = dp._Sealer(CIPHER, keys.c2p)
            await stream.send_all(dp.MAGIC + ticket + sealer.seal(dp.T_HELLO, b""))
            with trio.fail_after(5):
                provider = await arrivals.receive()
            first = sealer.seal(dp.T_DATA, b"transfer 10 coins")
            await stream.send_all(first)
            assert await provider.receive_some(1 << 20) == b"transfer 10 coins"
            second = bytearray(sealer.seal(dp.T_DATA, b"transfer 20 coins"))
            if attack == "flip":
                second[-20] ^= 1
                await stream.send_all(bytes(second))
            elif attack == "replay":
                await stream.send_all(first)  # an old record again: counter mismatch
            else:
                await stream.send_all(bytes(second[: len(second) // 2]))
                await stream.send_eof()  # TCP FIN with no EOF record: not a clean end
            try:
                with trio.fail_after(5):
                    got = await provider.receive_some(1 << 20)
            except ChannelBroken:
                got = None
            assert got is None, (attack, got)
            await stream.aclose()
            await provider.aclose()
            n.cancel_scope.cancel()


async def test_relay_back_pressure_holds_at_most_a_record_each_way():
    # The provider relays to a "container" that never reads: the client must stall
    # while the provider holds no more than one record plus its read buffer.
    server = dp.DataPathServer()
    async with trio.open_nursery() as n:
        await n.start(server.serve)
        client, provider = await direct_pair(server)
        _box_side, relay_side = await tcp_pair()  # nobody reads _box_side
        stats = PipeStats()
        n.start_soon(functools.partial(pipe, provider, relay_side, stats=stats))
        sent = 0
        chunk = os.urandom(1 << 20)
        with trio.move_on_after(3):
            while sent < 512 << 20:
                await client.send_all(chunk)
                sent += len(chunk)
        assert sent < 512 << 20, "the writer never stalled"
        held = sum(stats.held) + provider.buffered()
        assert held <= 2 * dp.RECORD_MAX + 2 * (dp.RECORD_MAX + 64), held
        assert provider.max_buffered <= len(provider._buf)
        n.cancel_scope.cancel()
