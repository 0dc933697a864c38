"""Every py-libp2p 0.8.1 workaround, in one place, each naming the upstream behaviour.

Call ``apply()`` once before creating hosts (``node.p2p.host`` does). Each workaround is
covered by a test in tests/test_p2p_adapter.py that fails without it.

1. Dial delay. ``libp2p.network.swarm._HAPPY_EYEBALLS_DELAY`` gives the primary
   transport a fixed 250 ms head start on every dial, even with a single address;
   with TCP only that is pure latency. Set to 0 (~7 ms dials on loopback).
2. Subscription channel. ``libp2p.pubsub.pubsub.SUBSCRIPTION_CHANNEL_SIZE`` is 32 and
   ``notify_subscriptions`` drops messages silently (``send_nowait`` + WouldBlock)
   when a subscriber falls behind a burst. Raised to SUBSCRIPTION_CHANNEL_SIZE.
3. Outbound RPC queue. ``RpcQueue()`` per peer holds 32 RPCs and rejects pushes when
   full, silently for published messages. Raised to OUTBOUND_QUEUE_SIZE by giving the
   pubsub module a subclass with a larger default.
4. GossipSub defaults (not a patch: constructor arguments, see ``gossipsub_params``):
   heartbeat 120 s and no degree defaults; spam protection that rate-limits every
   peer (even local publishes) at 10 msg/s/topic and drops silently. We set degree,
   heartbeat and a per-peer rate high enough for the protocol's own traffic; our own
   validators (wire.decode) reject bad messages and count them.
5. Yamux data path (the stream benchmark: ~45 MiB/s upstream vs >= 100 MiB/s here).
   ``YamuxStream.write`` caps frames at ``yamux.MAX_MESSAGE_SIZE`` (64 KiB), and when
   the peer's window is exhausted it polls with ``trio.sleep(0.01)``: every window stall
   costs up to 10 ms. We raise the sender-side frame cap to 1 MiB (frames still never
   exceed the peer's advertised window, so any yamux peer accepts them) and shorten
   that poll to 1 ms through a proxy of the ``trio`` module seen by yamux only.
6. Connection manager. ``ConnectionConfig`` defaults keep >= 50 connections and
   auto-dial every peer in the peerstore up to 100 (a full mesh in any devnet), each
   connection with its own identify, pubsub stream and yamux keep-alive traffic. We keep
   a small set (a GossipSub mesh needs ~D peers; routing uses the DHT).
7. Pubsub message ids and signing. Upstream ids are (from, seqno) and every message
   carries a second libp2p signature. Our envelopes are already signed (EIP-712) and
   the validator binds the signer to the publishing peer, so ids are the hash of the
   payload (an attacker cannot pre-empt an honest message's id, and re-published
   identical bytes are deduplicated before validation) and libp2p's own signature is
   off (one secp256k1 verify less per delivery).
8. Lost pubsub peers. Pubsub opens its stream to a new peer from the ``connected``
   notifee and gives up after a few retries; when that fails (seen ~1 in 4 devnet starts
   of 25 nodes) the peer stays connected but never exchanges subscriptions and never
   joins a mesh. ``KaisarHost`` re-registers such peers with
   ``Pubsub.ensure_peer_stream``: one attempt per peer at a time, each allowed
   PUBSUB_REPAIR_TIMEOUT, the next at the next PUBSUB_REPAIR_INTERVAL (an earlier
   version cut each attempt off after PUBSUB_REPAIR_INTERVAL = 1 s and began another: in a busy
   process, where a stream negotiation takes longer, the peer was never registered and
   every second left a half-negotiated stream behind).
9. Teardown race. When hosts stop while gossip is in flight, pubsub's stream reader
   schedules ``push_msg`` on its service manager after that manager's nursery closed,
   and ``RuntimeError("Nursery is closed to new arrivals")`` escapes the host (seen in
   ~1 of 4 devnet shutdowns). ``KaisarHost`` treats exactly that error, during its own
   shutdown, as a clean stop (``is_teardown_race``).
10. Optimistic pending queue (left as is). GossipSub queues each published message for
   connected peers that are not (yet) subscribed to its topic, 100 per peer, and logs
   a WARNING per message once full ("pending message queue ... exceeded limit"). For
   peers that never subscribe to that topic the drops lose nothing; it is log noise in
   large in-process benchmarks (seen with 16 checkers), not message loss.
11. Log noise. ``kad_dht`` logs a WARNING "Failed to read DHT message from stream" each
   time a remote closes a DHT stream after its query (the normal end of a query), so
   that logger is raised to ERROR.
12. Relay circuits that end. ``CircuitV2Protocol`` (circuit relay v2 hop) books circuits
   in ``_active_relays`` keyed by *peer id*, and each direction's ``_relay_data`` closes
   whatever entry its peer id names when it ends. With two clients relayed to one
   provider, the first client leaving closes the *second* client's circuit (seen: the
   second client's connection drops within a second), and a source EOF is never passed
   on to the destination. ``RelayHopProtocol._relay_data`` pipes each circuit on its
   own: EOF is forwarded as a half-close, an error or limit resets both legs of *this*
   circuit only.
13. Unlimited relay data. The hop passes a circuit byte budget only when
   ``RelayLimits.data > 0``; with ``data = 0`` (the spec's "unlimited") it falls back to
   per-reservation accounting against a limit of 0 and resets the circuit on the
   destination's first byte. ``RelayHopProtocol`` treats 0 as unlimited.
14. Reservation slots of departed peers. ``RelayResourceManager.can_accept_reservation``
   counts every unexpired reservation, although a reservation is void once its peer
   disconnects (the same class refuses circuits to such a peer). A provider that
   restarts or moves keeps its slot for the whole TTL (an hour by default), so a relay
   at its limit refuses every new provider meanwhile. ``LiveReservations`` forgets the
   reservations of disconnected peers before counting.
15. Relay log noise. The hop logs an ERROR ("Error reading from hop stream") each time a
   peer closes its stream after a RESERVE or after a circuit ends (the normal end of the
   exchange), and the relay transport a WARNING for every dial to a peer not yet in the
   peerstore. Both loggers are raised to CRITICAL; ``node.p2p.relay`` logs the relay's
   events (reservations, refusals, circuits) itself.
16. Dial negative cache. After a dial to a peer fails on every address, the swarm
   refuses to dial that peer again for 60 s (``_NegativePeerCache``, "recently failed
   all addresses"). A node that was killed and restarts on the same address within
   that minute stays cut off from everyone that tried to reach it meanwhile (seen in
   the restart tests: ~60 s without gossip). The TTL is set to DIAL_NEGATIVE_CACHE_TTL
   per swarm (``shorten_dial_negative_cache``); our own dial loops back off anyway.
17. GossipSub mesh churn (seen: 16 checkers fully connected, one of them cut off from
   ``assign/1`` for a minute, "GRAFT flood detected ... applying penalty" in the log).
   Upstream departs from the gossipsub v1.1 spec in three ways that together do it once a
   host has more subscribed peers than ``degree_high``:
   a. *Opportunistic grafting on every heartbeat.* The spec grafts up to 2 peers every 60
      heartbeats and only when the mesh's median score is below a threshold; upstream
      grafts 2 peers every heartbeat whenever candidates score >= that threshold, which
      with no score parameters (all scores 0) is every peer: the mesh grows past
      ``degree_high``, is pruned back to ``degree``, and grows again, 5 times a second.
   b. *No backoff on the pruning side.* The spec has both the pruned and the pruning
      peer back off from each other; upstream's heartbeat prune records nothing, so the
      pruner re-grafts the peer it just pruned (by a.), the pruned peer sees a GRAFT
      inside its backoff ("GRAFT flood"), PRUNEs back, and both stay apart for
      ``prune_back_off`` (60 s). Within a few seconds a host can be backed off from
      every peer: an empty mesh, and no IHAVE either (upstream gossips only to peers
      not in backoff), so it hears nothing on the topic for a minute.
   c. *Control messages leak between peers.* ``_emit_control_msgs`` builds its GRAFT,
      PRUNE and IHAVE lists once outside its per-peer loop, so every peer gets the
      GRAFTs (and any PRUNEs) meant for the peers before it.
   ``KaisarGossipSub`` skips opportunistic grafting (it only helps with score
   parameters, which we do not set: our validators reject bad messages instead), backs
   off from the peers it prunes, and builds each peer's control message from that
   peer's own entries.
18. Dead connections stay selectable. When a connection's yamux muxer shuts down (seen:
   "TCP connection reset by remote peer" between two hosts of one devnet process, cause
   not found), its ``SwarmConn`` stays in ``Swarm.connections`` until the connection's
   own accept loop runs, sees ``MuxedConnUnavailable`` and closes it; ``new_stream``
   meanwhile picks it and the stream fails in multistream-select ("MultiselectClient
   handshake: write failed" / "read failed"). On a busy loop that window held both of a
   tunnel's attempts (1 in ~4 ``kaisar bench deploy`` runs lost a job that way).
   ``KaisarHost.open_stream``, when a stream cannot be opened, closes the peer's
   connections whose muxer is no longer established (``drop_dead_connections``; looked
   at again 0.1 s later, since a connection that just broke shows it only once its
   reader ran), or all of them when the error says a write failed (yamux keeps such a
   connection "established": seen 290 ms later still), dials again and retries once (test: tests/test_p2p_host.py,
   ``test_stream_opens_over_a_fresh_connection_when_the_muxer_died``).
19. Host teardown leaves connections open (not a patch: ``KaisarHost._close_connections``,
   tested in tests/test_p2p_host.py). Leaving ``BasicHost.run()`` cancels the swarm's
   tasks but never closes its connections' sockets, so in a process that lives on
   (a client or test host closed in place) peers kept the old connection and its
   pubsub stream, and a new host with the same key heard no gossip (docs/SOAK.md,
   bug 3). The host closes every connection (``Swarm.close_peer``) before the swarm
   stops, shielded and bounded by ``CLOSE_TIMEOUT``. The closes race the muxers'
   readers (and a socket closed with unread data sends a reset), so a
   ``BrokenResourceError`` / ``ClosedResourceError`` from the host's own teardown is a
   clean stop (``KaisarHost._closed_in_teardown``, logged ``host_teardown_reset``).
   Such a reset group can replace the body's own error while it unwinds the host (an
   exit step raising during the unwind); muting the resets then muted the body's error
   too (``kaisar bench deploy`` once went on with no jobs after its readiness timeout),
   so the host re-raises the body's error when the group it mutes has lost it
   (``KaisarHost._raise_lost_body_error``).
20. Pubsub sequence numbers repeat after a restart. ``Pubsub.counter`` starts at
   ``int(time.time())`` (seconds) and counts one per published message, so a node that
   published more messages than seconds it ran (a checker's votes and attestations, a
   provider's ads and statuses) restarts below its old counter and reuses
   (from, seqno) pairs its peers remember. GossipSub's equivocation check then refuses
   to forward those messages and penalises the publisher 100 points each, enough to
   graylist it (seen in the 30-minute soak: "Equivocation detected from peer ..." for a
   restarted node). ``KaisarHost`` starts the counter at the time in microseconds
   (``initial_pubsub_seqno``): unique across restarts unless a node publishes more
   than a million messages a second (test: tests/test_p2p_adapter.py,
   ``test_pubsub_seqnos_do_not_repeat_after_a_restart``).
21. Subscriptions lost while a peer's pubsub stream opens. ``Pubsub._handle_new_peer``
   builds its hello (our subscriptions) before it writes it, and adds the peer to
   ``Pubsub.peers`` only after the write; ``subscribe`` announces a new topic to
   ``Pubsub.peers`` only. A topic subscribed in between reaches neither message, and
   the peer never learns it: nothing announces subscriptions again. Seen in the full
   test suite (2 in 5 runs of the first 16 test files): a client that subscribed to
   ``ads/1`` right after connecting heard no provider ad for 10 s, the provider's
   ``peer_topics`` lacking it while both were connected and registered with pubsub.
   ``KaisarPubsub`` announces, once the peer is registered, every subscription change
   made since the hello was prepared (test: tests/test_p2p_adapter.py,
   ``test_a_topic_subscribed_while_the_hello_is_written_reaches_the_peer``).
22. A yamux WINDOW_UPDATE for every read. ``YamuxStream._auto_tune_and_send_window_update``
   gives back the credit of every read as soon as any is outstanding (its "partial
   slack" branch, and ``PY_YAMUX_RELEASE_ON_READ``): each gossip RPC, vote or status
   read costs the reader one more frame (a Noise encryption and a socket write). A
   py-spy profile of ``kaisar bench deploy`` (main thread, jobs phase) spent 18 % of its
   samples in socket sends, most of them these updates. Credit now goes back once half
   the receive window is used (the go-yamux rule; upstream's own grow branch then
   restores the whole window): a sender never stalls, it still holds the other half
   (test: tests/test_p2p_adapter.py, ``test_small_reads_do_not_each_send_a_window_update``).
"""

from __future__ import annotations

import logging
import time
import types
from dataclasses import dataclass

import libp2p.network.swarm as _swarm
import libp2p.pubsub.pubsub as _pubsub
import libp2p.stream_muxer.yamux.yamux as _yamux
import trio
from libp2p.pubsub.gossipsub import GossipSub as _GossipSub
from libp2p.pubsub.pb import rpc_pb2 as _rpc_pb2
from libp2p.pubsub.pubsub import Pubsub as _Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue as _RpcQueue
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol as _CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayResourceManager as _RelayResourceManager
from libp2p.tools.constants import MAX_READ_LEN as _MAX_READ_LEN

DIAL_DELAY = 0.0
SUBSCRIPTION_CHANNEL_SIZE = 4096
OUTBOUND_QUEUE_SIZE = 4096
GOSSIP_MAX_MSGS_PER_PEER_TOPIC_SECOND = 2000.0
PUBSUB_REPAIR_INTERVAL = 1.0
PUBSUB_REPAIR_TIMEOUT = 10.0  # one registration attempt (a stream open + hello)
YAMUX_MAX_FRAME = 1 << 20
YAMUX_UPSTREAM_POLL = 0.01
YAMUX_WINDOW_POLL = 0.001
DIAL_NEGATIVE_CACHE_TTL = 1.0
RELAY_LOG = logging.getLogger("kaisar.relay")
RELAY_NOISY_LOGGERS = ("libp2p.relay.circuit_v2.protocol", "libp2p.relay.circuit_v2.transport")

_applied = False


class LargeRpcQueue(_RpcQueue):
    """RpcQueue with room for bursts (upstream default 32 drops silently)."""

    def __init__(self, max_size: int = OUTBOUND_QUEUE_SIZE, **kwargs) -> None:
        super().__init__(max_size=max_size, **kwargs)


class _YamuxTrio(types.ModuleType):
    """The ``trio`` module as yamux sees it, with the window-wait poll shortened."""

    def __getattr__(self, name: str):
        return getattr(trio, name)

    @staticmethod
    async def sleep(seconds: float) -> None:
        await trio.sleep(YAMUX_WINDOW_POLL if seconds == YAMUX_UPSTREAM_POLL else seconds)


_YAMUX_TRIO = _YamuxTrio("trio")
_YAMUX_UPSTREAM_FRAME = _yamux.MAX_MESSAGE_SIZE


_UPSTREAM_WINDOW_UPDATE = _yamux.YamuxStream._auto_tune_and_send_window_update


async def _window_update_at_half(self, *, bytes_read: int = 0) -> None:
    """Item 22: no WINDOW_UPDATE while less than half the receive window is used."""
    if bytes_read > 0:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        used = self.target_recv_window - (self.recv_window + buffered)
        if 0 < used < self._grow_threshold():
            return  # given back with the rest once half the window is used
    await _UPSTREAM_WINDOW_UPDATE(self, bytes_read=bytes_read)


def apply() -> None:
    """Install the module-level workarounds (idempotent)."""
    global _applied
    _yamux.YamuxStream._auto_tune_and_send_window_update = _window_update_at_half  # type: ignore[method-assign]
    _swarm._HAPPY_EYEBALLS_DELAY = DIAL_DELAY
    _pubsub.SUBSCRIPTION_CHANNEL_SIZE = SUBSCRIPTION_CHANNEL_SIZE
    _pubsub.RpcQueue = LargeRpcQueue  # type: ignore[misc,assignment]
    _yamux.MAX_MESSAGE_SIZE = YAMUX_MAX_FRAME
    _yamux.trio = _YAMUX_TRIO  # type: ignore[attr-defined]
    logging.getLogger("libp2p.kad_dht.kad_dht").setLevel(logging.ERROR)
    for name in RELAY_NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    _applied = True


def shorten_dial_negative_cache(network: object, ttl: float = DIAL_NEGATIVE_CACHE_TTL) -> None:
    """Item 16: a peer whose dial failed may be dialled again after ``ttl`` s (upstream 60)."""
    cache = getattr(network, "_negative_peer_cache", None)
    if cache is not None and hasattr(cache, "_ttl"):
        cache._ttl = ttl


def is_applied() -> bool:
    return (
        _swarm._HAPPY_EYEBALLS_DELAY == DIAL_DELAY
        and _pubsub.SUBSCRIPTION_CHANNEL_SIZE == SUBSCRIPTION_CHANNEL_SIZE
        and _pubsub.RpcQueue is LargeRpcQueue
        and _yamux.MAX_MESSAGE_SIZE == YAMUX_MAX_FRAME
        and _yamux.trio is _YAMUX_TRIO
        and _yamux.YamuxStream._auto_tune_and_send_window_update is _window_update_at_half
    )


def revert_for_tests() -> None:
    """Restore upstream behaviour (tests use it to show each workaround matters)."""
    _swarm._HAPPY_EYEBALLS_DELAY = 0.250
    _pubsub.SUBSCRIPTION_CHANNEL_SIZE = 32
    _pubsub.RpcQueue = _RpcQueue  # type: ignore[misc]
    _yamux.MAX_MESSAGE_SIZE = _YAMUX_UPSTREAM_FRAME
    _yamux.trio = trio  # type: ignore[attr-defined]
    _yamux.YamuxStream._auto_tune_and_send_window_update = _UPSTREAM_WINDOW_UPDATE  # type: ignore[method-assign]


def is_teardown_race(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(is_teardown_race(e) for e in exc.exceptions)
    return isinstance(exc, RuntimeError) and "Nursery is closed to new arrivals" in str(exc)


class TeardownRaceLogFilter(logging.Filter):
    """Drops py-libp2p's ERROR log of the shutdown race (item 9): its service manager
    logs "task ... exited with error" with a full traceback before the host treats the
    same error as a clean stop. Attach to log *handlers*: libp2p logs it from one
    logger per service class, and logger filters do not apply to child loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and is_teardown_race(exc))


CONNECTIONS_LOW = 8
CLOSE_DEAD_TIMEOUT = 1.0  # closing a dead connection (18) includes a 0.1 s upstream sleep
CONNECTIONS_HIGH = 64


def _muxer_alive(conn) -> bool:
    if getattr(conn, "is_closed", False):
        return False
    established = getattr(conn.muxed_conn, "is_established", True)
    return bool(established() if callable(established) else established)


def write_failed(exc: BaseException | None) -> bool:
    """18: does this stream-open error say a frame could not be written to the
    connection (yamux "Failed to send SYN", multistream "write failed")? The transport
    is broken then, although yamux still reports the connection established."""
    for _ in range(8):  # the cause chain: SwarmException <- MuxedStreamError <- OSError
        if exc is None:
            return False
        text = str(exc)
        if "Failed to send SYN" in text or "write failed" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def drop_dead_connections(host, peer_id, *, broken: bool = False) -> bool:
    """18: close ``peer_id``'s connections whose muxer shut down (all of them when
    ``broken``: a write to them failed). True if it closed any, or if no live
    connection to the peer is left (all of them closing, or gone): either way another
    attempt, over a fresh dial where needed, can help."""
    import trio

    conns = host.get_network().get_connections(peer_id)
    dead = list(conns) if broken else [c for c in conns if not _muxer_alive(c)]
    closing = [c for c in dead if not getattr(c, "is_closed", False)]
    for conn in closing:
        with trio.move_on_after(CLOSE_DEAD_TIMEOUT):
            try:
                await conn.close()
            except Exception:  # already half torn down: removal is what matters
                pass
    return bool(closing) or len(dead) == len(conns)


def connection_config():
    from libp2p.network.config import ConnectionConfig

    return ConnectionConfig(
        min_connections=CONNECTIONS_LOW,
        low_watermark=CONNECTIONS_LOW,
        high_watermark=CONNECTIONS_HIGH,
        max_connections=CONNECTIONS_HIGH * 2,
    )


def content_msg_id(msg) -> bytes:
    import hashlib

    return hashlib.sha256(msg.data).digest()


def initial_pubsub_seqno() -> int:
    """First pubsub sequence number of a host (item 20): microseconds since the epoch."""
    return time.time_ns() // 1000


def pubsub_kwargs() -> dict:
    return {
        "max_inbound_rpc_size": 1 << 20,
        "strict_signing": False,
        "msg_id_constructor": content_msg_id,
    }


@dataclass(frozen=True)
class GossipParams:
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_interval: float = 1.0


def gossipsub_kwargs(params: GossipParams) -> dict:
    """Explicit GossipSub constructor arguments (upstream: heartbeat 120 s, 10 msg/s spam cap)."""
    return {
        "degree": params.degree,
        "degree_low": params.degree_low,
        "degree_high": params.degree_high,
        "heartbeat_interval": params.heartbeat_interval,
        "heartbeat_initial_delay": 0.1,
        "time_to_live": 30,
        "max_messages_per_topic_per_second": GOSSIP_MAX_MSGS_PER_PEER_TOPIC_SECOND,
    }


# GossipSub mesh maintenance (item 17) ------------------------------------------------


class KaisarGossipSub(_GossipSub):
    """GossipSub with the mesh maintenance of the v1.1 spec (adapter item 17)."""

    def _perform_opportunistic_grafting(self, topic, peers_to_graft) -> int:
        """17a: no opportunistic grafting (a score-driven mesh improvement; we set no
        score parameters, so upstream's every-heartbeat version only churns the mesh)."""
        return 0

    def mesh_heartbeat(self):
        """17b: the pruning side backs off from each peer it prunes, as the pruned one does."""
        peers_to_graft, peers_to_prune = super().mesh_heartbeat()
        for peer, topics in peers_to_prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
        return peers_to_graft, peers_to_prune

    async def _emit_control_msgs(self, peers_to_graft, peers_to_prune, peers_to_gossip) -> None:
        """17c: one control message per peer, holding that peer's own GRAFT, PRUNE and IHAVE."""
        for peer in set(peers_to_graft) | set(peers_to_prune) | set(peers_to_gossip):
            grafts = [_rpc_pb2.ControlGraft(topicID=t) for t in peers_to_graft.get(peer, ())]
            prunes = [
                _rpc_pb2.ControlPrune(topicID=t, backoff=self.prune_back_off)
                for t in peers_to_prune.get(peer, ())
            ]
            ihaves = [
                _rpc_pb2.ControlIHave(messageIDs=ids, topicID=t)
                for t, ids in peers_to_gossip.get(peer, {}).items()
            ]
            control = self.pack_control_msgs(ihaves, grafts, prunes)
            await self.emit_control_message(control, peer)


class KaisarPubsub(_Pubsub):
    """Pubsub that tells a new peer about subscriptions its hello missed (item 21)."""

    async def _handle_new_peer(self, peer_id) -> None:
        before = set(self.topic_ids)  # the hello holds these, and perhaps later ones
        await super()._handle_new_peer(peer_id)
        queue = self.peer_queues.get(peer_id)
        if queue is None:  # not registered (failed, or a duplicate attempt)
            return
        now = set(self.topic_ids)
        # Re-announcing a topic the hello already carried is harmless (idempotent).
        changes = [(t, True) for t in sorted(now - before)] + [(t, False) for t in sorted(before - now)]
        for topic, subscribe in changes:
            packet, subopt = self._build_announce_rpc(topic, subscribe=subscribe)
            self._enqueue_or_retry_announce(peer_id, queue, packet, subopt)


# circuit relay v2 (items 12-14) -------------------------------------------------------


class _CircuitLimit(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(f"circuit {what} limit reached")


class LiveReservations(_RelayResourceManager):
    """Item 14: a departed peer's reservation does not hold a slot."""

    def can_accept_reservation(self, peer_id) -> bool:
        gone = [p for p in self._reservations if p != peer_id and not self._is_peer_connected(p)]
        for p in gone:
            del self._reservations[p]
        return super().can_accept_reservation(peer_id)


class RelayHopProtocol(_CircuitV2Protocol):
    """A circuit relay v2 hop (``allow_hop``) with items 12-14 fixed."""

    def __init__(self, host, limits, **kwargs) -> None:
        super().__init__(host, limits, allow_hop=True, **kwargs)
        self.resource_manager = LiveReservations(self.limits, host)

    async def _relay_data(
        self, src_stream, dst_stream, peer_id, deadline=None, circuit_data_limit=None
    ) -> None:
        """Items 12 and 13: one direction of *this* circuit; no byte budget = unlimited."""
        budget = circuit_data_limit  # one list shared by both directions; None: unlimited
        try:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    raise _CircuitLimit("duration")
                data = await src_stream.read(_MAX_READ_LEN)
                if not data:  # EOF: pass the half-close on, the other direction continues
                    await dst_stream.close_write()
                    await src_stream.close_read()
                    return
                if budget is not None:
                    if len(data) > budget[0]:
                        raise _CircuitLimit("data")
                    budget[0] -= len(data)
                with trio.fail_after(self.write_timeout):
                    await dst_stream.write(data)
        except Exception as exc:  # reset, limit, timeout: end this circuit, and only it
            RELAY_LOG.info("event=relay_circuit_reset peer=%s why=%r", peer_id, exc)
            for s in (src_stream, dst_stream):
                try:
                    await s.reset()
                except Exception:
                    pass
        finally:
            entry = self._active_relays.get(peer_id)
            if entry is not None and (src_stream in entry or dst_stream in entry):
                del self._active_relays[peer_id]
