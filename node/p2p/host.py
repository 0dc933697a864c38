"""The Kaisar libp2p host: TCP + Noise + Yamux, identify, ping, Kad-DHT, gossip, streams.

``open_host(...)`` is an async context manager: inside it the host listens (verified:
py-libp2p's ``host.run()`` does not raise when listening fails), gossip and the DHT
run, and bootstrap peers are dialled. Leaving it closes everything.

Gossip: ``subscribe(topic, handler)`` registers a validator that runs the full wire
checks (``wire.decode``) *and* requires the envelope signer to be the key of the
publishing peer, so a message cannot be re-published under someone else's peer ID.
Each forwarding peer and each signer has a message budget (``limits.GossipGate``).
Rejected messages are counted by reason and never reach a handler; a handler that
raises is logged and counted, never kills the host.

Streams: ``set_handler(protocol, handler)`` admits each inbound stream through the
per-peer gate (``node/p2p/limits.py``: rate per protocol, concurrency per peer and in
total; a refused stream is reset unread), runs ``handler(framed, peer_id)`` and
always closes the stream; ``request(...)`` is the one-frame-in, one-frame-out helper.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from node import metrics, wire
from node.eip712 import Domain
from node.errors import leaves
from node.identity import Identity, peer_id_to_address
from node.p2p import adapter
from node.p2p.frames import DEFAULT_MAX_FRAME, FramedStream, FrameError
from node.p2p.limits import GossipGate, GossipLimits, StreamGate, StreamLimits

log = logging.getLogger("kaisar.p2p")

GOSSIPSUB_PROTOCOLS = [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]
DIAL_TIMEOUT = 10.0
HEAL_SETTLE = 0.1  # s: after a failed stream open, for a broken connection to show
STREAM_OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # closing a stopping host's connections gives up after this

# Gossip topics and the message types each may carry. Later issues add types here.
TOPIC_TYPES: dict[str, set[str]] = {
    "ads/1": set(),
    "attest/1": set(),
    "assign/1": set(),
    "status/1": {"Heartbeat"},
}

GossipHandler = Callable[[wire.Envelope, ID], Awaitable[None]]
StreamHandler = Callable[[FramedStream, ID], Awaitable[None]]


class P2PError(Exception):
    """Listening, dialling or a stream request failed."""


def topic_name(network: str, suffix: str) -> str:
    return f"/kaisar/{network}/{suffix}"


BOOTSTRAP_RECHECK_S = 1.0  # a lost bootstrap connection is dialled again this soon


@dataclass
class HostOptions:
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: Sequence[str] = ()
    gossip: adapter.GossipParams = field(default_factory=adapter.GossipParams)
    dht: bool = True
    max_message_size: int = 64 * 1024
    stream_limits: StreamLimits = field(default_factory=StreamLimits)
    gossip_limits: GossipLimits = field(default_factory=GossipLimits)


class KaisarHost:
    """A running host; create it with ``open_host``."""

    def __init__(
        self,
        identity: Identity,
        *,
        network: str,
        domain: Domain,
        options: HostOptions,
        roles: wire.RoleRegistry | None = None,
    ) -> None:
        adapter.apply()
        self.identity = identity
        self.network = network
        self.domain = domain
        self.options = options
        self.roles = roles
        self.replay = wire.ReplayGuard()
        self.gate = StreamGate(options.stream_limits)
        self.gossip_gate = GossipGate(options.gossip_limits)
        self._label = identity.address[:10]
        noise_key = create_x25519_key_pair()
        self.host = new_host(
            key_pair=identity.keypair,
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(
                    identity.keypair, noise_privkey=noise_key.private_key
                )
            },
            muxer_preference="YAMUX",
            listen_addrs=[multiaddr.Multiaddr(a) for a in options.listen],
            connection_config=adapter.connection_config(),
        )
        adapter.shorten_dial_negative_cache(self.host.get_network())
        self.gossipsub = adapter.KaisarGossipSub(
            protocols=GOSSIPSUB_PROTOCOLS, **adapter.gossipsub_kwargs(options.gossip)
        )
        self.pubsub = adapter.KaisarPubsub(self.host, self.gossipsub, **adapter.pubsub_kwargs())
        self.pubsub.counter = adapter.initial_pubsub_seqno()  # adapter.py item 20
        self.dht: KadDHT | None = None
        self._nursery: trio.Nursery | None = None
        self._closing = False  # the body is done: the host is tearing down
        self._body_errors: set[int] = set()  # ids of the body's own exceptions (never muted)
        self._body_exc: BaseException | None = None  # the body's exception, as raised
        self._decoded: dict[bytes, wire.Envelope] = {}
        self._from_cache: dict[bytes, str] = {}
        self._seq = wire.now_ms()  # strictly increasing across restarts

    # identity ---------------------------------------------------------------

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    @property
    def address(self) -> str:
        return self.identity.address

    def addrs(self) -> list[str]:
        """Full dialable multiaddrs (with /p2p/<id>)."""
        return [str(a) for a in self.host.get_addrs()]

    def next_seq(self) -> int:
        self._seq = max(self._seq + 1, wire.now_ms())
        return self._seq

    # lifecycle ----------------------------------------------------------------

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[KaisarHost]:
        try:
            async with self._serving() as host:
                yield host
        except BaseExceptionGroup as group:
            resets, group2 = group.split(lambda e: self._closed_in_teardown(e))
            if resets is not None:  # logged, not raised: see _closed_in_teardown
                log.info("event=host_teardown_reset err=%r", leaves(resets)[0])
            if group2 is None:
                self._raise_lost_body_error(group)
                return
            _, rest = group2.split(adapter.is_teardown_race)
            if rest is None:  # only py-libp2p's shutdown race (adapter.py item 9): a clean stop
                self._raise_lost_body_error(group)
                return
            # py-libp2p nests each service in its own nursery, so one error arrives
            # wrapped ten groups deep (pytest and tracebacks then hide its message).
            # A single underlying exception is re-raised as itself.
            inner = leaves(rest)
            if len(inner) == 1:
                raise inner[0] from None
            raise rest from None

    @asynccontextmanager
    async def _serving(self) -> AsyncIterator[KaisarHost]:
        listen = [multiaddr.Multiaddr(a) for a in self.options.listen]
        async with self.host.run(listen_addrs=listen):
            try:
                if not self.host.get_addrs():
                    raise P2PError(f"not listening on {', '.join(self.options.listen)}")
                async with (
                    background_trio_service(self.pubsub),
                    background_trio_service(self.gossipsub),
                ):
                    await self.pubsub.wait_until_ready()
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        if self.options.dht:
                            self.dht = KadDHT(self.host, DHTMode.SERVER)
                            nursery.start_soon(self._run_dht)
                        for addr in self.options.bootstrap:
                            nursery.start_soon(self._dial_bootstrap, addr)
                        nursery.start_soon(self._repair_pubsub_peers)
                        try:
                            yield self
                        except BaseException as exc:
                            self._body_errors = {id(e) for e in leaves(exc)}
                            self._body_exc = exc
                            raise
                        finally:
                            self._closing = True
                            nursery.cancel_scope.cancel()
            finally:
                await self._close_connections()

    def _raise_lost_body_error(self, group: BaseExceptionGroup) -> None:
        """A teardown error raised while the body's own exception was on its way out
        replaces it (a service's exit raising a reset group during the unwind). Muting
        that reset must not mute the body's error with it: raise the body's error."""
        body = self._body_exc
        if body is not None and not any(id(e) in self._body_errors for e in leaves(group)):
            raise body

    def _closed_in_teardown(self, exc: BaseException) -> bool:
        """A connection reset or closed while this host tears down (its own closes,
        item 19, race the muxers' readers; a peer may reset as it closes too): a clean
        stop. Never an exception raised by the code that used the host."""
        return (
            self._closing
            and isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)
            and id(exc) not in self._body_errors
        )

    async def _close_connections(self) -> None:
        """Close every connection before the swarm stops (adapter.py item 19).

        py-libp2p's ``host.run()`` only cancels the swarm's tasks on exit: the sockets of
        live connections stayed open in a process that lives on (a client or test host
        closed in place), so peers kept the old connection and its pubsub stream, and a
        new host with the same key was never heard (docs/SOAK.md, bug 3). Shielded and
        bounded: it runs while the host is being cancelled, and a stuck close must not
        hold the teardown."""
        network = self.host.get_network()
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            for peer in list(network.connections):
                try:
                    await network.close_peer(peer)
                except Exception as exc:  # already reset by the peer
                    log.debug("event=close_peer_failed peer=%s err=%s", peer, exc)

    async def _run_dht(self) -> None:
        assert self.dht is not None
        try:
            async with background_trio_service(self.dht):
                await trio.sleep_forever()
        except Exception:  # the DHT is an optimisation for routing; never fatal
            log.exception("event=dht_stopped")

    async def _repair_pubsub_peers(self) -> None:
        """Register connected peers that pubsub missed (see adapter.py, item 8).

        py-libp2p opens the pubsub stream from the ``connected`` notifee and gives up
        on a failed protocol negotiation; such a peer stays connected but never
        exchanges subscriptions, so it never joins a mesh. Every
        PUBSUB_REPAIR_INTERVAL each such peer without an attempt in flight gets one,
        allowed PUBSUB_REPAIR_TIMEOUT: cutting an attempt short when the process is busy
        only abandons a half-negotiated stream and opens another.
        """
        assert self._nursery is not None
        busy: set[ID] = set()

        async def attempt(peer: ID) -> None:
            try:
                with trio.move_on_after(adapter.PUBSUB_REPAIR_TIMEOUT):
                    if await self.pubsub.ensure_peer_stream(peer, timeout=adapter.PUBSUB_REPAIR_TIMEOUT):
                        log.info("event=pubsub_peer_repaired peer=%s", peer)
            except Exception as exc:  # the peer went away; a later round retries
                log.debug("event=pubsub_repair_failed peer=%s err=%s", peer, exc)
            finally:
                busy.discard(peer)

        while True:
            await trio.sleep(adapter.PUBSUB_REPAIR_INTERVAL)
            for peer in self.host.get_connected_peers():
                if peer not in self.pubsub.peers and peer not in busy:
                    busy.add(peer)
                    self._nursery.start_soon(attempt, peer)

    async def _dial_bootstrap(self, addr: str) -> None:
        """Dial a bootstrap peer, and dial it again whenever the connection is gone.

        A peer that restarts (kill -9, upgrade) or comes back after a network cut does
        not know who was connected to it: without the re-dial a checker restarted in a
        network whose providers bootstrapped from it hears no gossip at all.
        """
        try:
            peer = info_from_p2p_addr(multiaddr.Multiaddr(addr)).peer_id
        except Exception as exc:
            log.warning("event=bootstrap_failed addr=%s err=bad address: %s", addr, exc)
            return
        attempt = 0
        while True:
            if peer in self.host.get_connected_peers():
                attempt = 0
                await trio.sleep(BOOTSTRAP_RECHECK_S)
                continue
            try:
                await self.connect(addr)
                log.info("event=bootstrap_connected addr=%s", addr)
                attempt = 0
            except P2PError as exc:
                level = logging.WARNING if attempt < 5 else logging.DEBUG
                log.log(level, "event=bootstrap_failed addr=%s attempt=%d err=%s", addr, attempt, exc)
                await trio.sleep(min(2**attempt * 0.2, BOOTSTRAP_RECHECK_S * 5))
                attempt += 1

    # connections -----------------------------------------------------------------

    async def connect(self, addr: str | PeerInfo) -> ID:
        try:
            info = addr if isinstance(addr, PeerInfo) else info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise P2PError(f"bad peer address {addr!r}: {exc}") from None
        with trio.move_on_after(DIAL_TIMEOUT) as scope:
            try:
                await self.host.connect(info)
            except Exception as exc:
                raise P2PError(f"cannot connect to {info.peer_id}: {exc}") from None
        if scope.cancelled_caught:
            raise P2PError(f"timed out connecting to {info.peer_id}")
        if self.dht is not None:
            # KadDHT does not learn about connected peers by itself: feed the routing table.
            with trio.move_on_after(DIAL_TIMEOUT):
                try:
                    await self.dht.add_peer(info.peer_id)
                except Exception as exc:
                    log.debug("event=dht_add_peer_failed peer=%s err=%s", info.peer_id, exc)
        return info.peer_id

    async def find_peer(self, peer_id: ID) -> PeerInfo | None:
        """Addresses of a peer: the peerstore first, then a Kad-DHT lookup."""
        addrs = self.host.get_peerstore().addrs(peer_id) if self._known(peer_id) else []
        if addrs:
            return PeerInfo(peer_id, addrs)
        if self.dht is None:
            return None
        with trio.move_on_after(DIAL_TIMEOUT):
            return await self.dht.find_peer(peer_id)
        return None

    def _known(self, peer_id: ID) -> bool:
        try:
            return bool(self.host.get_peerstore().addrs(peer_id))
        except Exception:
            return False

    def connected_peers(self) -> list[ID]:
        return list(self.host.get_connected_peers())

    async def _heal(self, peer_id: ID, exc: BaseException) -> bool:
        """After a stream could not be opened: drop the peer's dead connections and dial
        again (adapter workaround 18). A connection that just broke is marked dead only
        once its reader task has run, so look again after HEAL_SETTLE; one a write
        failed on is broken whatever yamux says. True if it did."""
        broken = adapter.write_failed(exc)
        dead = await adapter.drop_dead_connections(self.host, peer_id, broken=broken)
        if not dead:
            await trio.sleep(HEAL_SETTLE)
            dead = await adapter.drop_dead_connections(self.host, peer_id)
        if dead:
            log.info("event=dead_connection_dropped peer=%s", peer_id)
            await self._redial(peer_id)
        return dead

    async def _redial(self, peer_id: ID) -> None:
        """A new connection to a peer whose connections are all closing: the swarm
        still lists them (``connected_peers``) until their teardown ends, so a plain
        ``ensure_connected`` would not dial; ``dial_peer`` skips closed connections."""
        with trio.move_on_after(DIAL_TIMEOUT):
            try:
                await self.host.get_network().dial_peer(peer_id)
                return
            except Exception as exc:  # no address in the peerstore (relayed peer): dial.py
                log.info("event=redial_failed peer=%s err=%s", peer_id, exc)
        await self.ensure_connected(peer_id)

    async def ensure_connected(self, peer_id: ID) -> None:
        if peer_id in self.host.get_connected_peers():
            return
        from node.p2p import dial  # direct addresses first, then the peer's relay addresses

        await dial.connect(self, peer_id)

    # gossip --------------------------------------------------------------------------

    def topic(self, suffix: str) -> str:
        return topic_name(self.network, suffix)

    async def subscribe(self, suffix: str, handler: GossipHandler) -> None:
        """Validate every message on a topic with the wire rules, then call ``handler``."""
        assert self._nursery is not None, "host not running"
        topic = self.topic(suffix)
        allowed = frozenset(TOPIC_TYPES[suffix])
        self.pubsub.set_topic_validator(topic, self._validator(topic, allowed), False)
        sub = await self.pubsub.subscribe(topic)
        self._nursery.start_soon(self._dispatch, topic, sub, handler, allowed)

    def _validator(self, topic: str, allowed: frozenset[str]) -> Callable[[ID, Any], bool]:
        def validate(forwarder: ID, msg: Any) -> bool:
            try:
                # Cheap checks first: the forwarding peer's budget before any signature work
                if not self.gossip_gate.forwarder_ok(str(forwarder)):
                    raise wire.WireError("rate-forwarder", f"{forwarder} relays too fast")
                env = self._decode(msg, allowed)
                if not self.gossip_gate.signer_ok(env.signer):
                    raise wire.WireError("rate-signer", f"{env.signer} signs too fast")
            except wire.WireError as exc:
                metrics.GOSSIP_REJECTED.labels(self._label, topic, exc.reason).inc()
                log.debug("event=gossip_rejected topic=%s reason=%s", topic, exc)
                return False
            self._decoded[_msg_key(msg)] = env
            if len(self._decoded) > 10_000:  # delivered entries are popped; bound leftovers
                self._decoded.pop(next(iter(self._decoded)))
            return True

        return validate

    def _decode(self, msg: Any, allowed: frozenset[str]) -> wire.Envelope:
        env = wire.decode(
            msg.data,
            domain=self.domain,
            network=self.network,
            replay=self.replay,
            roles=self.roles,
            allowed_types=allowed,
        )
        if env.signer != self._from_address(msg.from_id):
            raise wire.WireError("publisher", "signer is not the publishing peer")
        # A node describes itself only: its ``peer`` field (heartbeats, ads, job statuses)
        # is where others dial it, so it must be the publishing peer, or a provider could
        # send checkers' PoPW challenges and clients' tunnels to another node.
        peer_field = env.body.get("peer")
        if peer_field is not None and peer_field != ID(msg.from_id).to_base58():
            raise wire.WireError("publisher", "peer field is not the publishing peer")
        return env

    def _from_address(self, from_id: bytes) -> str | None:
        addr = self._from_cache.get(from_id)
        if addr is None:
            try:
                addr = peer_id_to_address(ID(from_id))
            except Exception:
                return None
            if len(self._from_cache) > 10_000:
                self._from_cache.clear()
            self._from_cache[from_id] = addr
        return addr

    async def _dispatch(self, topic: str, sub: Any, handler: GossipHandler, allowed) -> None:
        while True:
            msg = await sub.get()
            env = self._decoded.pop(_msg_key(msg), None)
            if env is None:  # validated earlier by another path; should not happen
                continue
            metrics.GOSSIP_IN.labels(self._label, topic).inc()
            try:
                await handler(env, ID(msg.from_id))
            except Exception:
                log.exception("event=gossip_handler_failed topic=%s type=%s", topic, env.type)

    async def publish(self, suffix: str, env: wire.Envelope) -> None:
        topic = self.topic(suffix)
        await self.pubsub.publish(topic, env.to_bytes())
        metrics.GOSSIP_OUT.labels(self._label, topic).inc()

    def sign(self, type_name: str, fields: dict[str, Any], *, ttl_ms: int | None = None) -> wire.Envelope:
        return wire.sign(
            self.identity,
            self.domain,
            type_name,
            fields,
            network=self.network,
            seq=self.next_seq(),
            ttl_ms=ttl_ms,
        )

    # streams ------------------------------------------------------------------------

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``: every inbound stream passes the per-peer gate (limits.py) first."""

        async def on_stream(stream: Any) -> None:
            peer = stream.muxed_conn.peer_id
            refused = self.gate.admit(str(peer), protocol)
            if refused is not None:
                metrics.STREAMS_LIMITED.labels(self._label, protocol, refused).inc()
                log.debug("event=stream_limited protocol=%s peer=%s reason=%s", protocol, peer, refused)
                await _reset(stream)
                return
            framed = FramedStream(stream)
            try:
                await handler(framed, peer)
            except FrameError as exc:
                metrics.STREAM_ERRORS.labels(self._label, protocol, "frame").inc()
                log.info("event=stream_failed protocol=%s peer=%s err=%s", protocol, peer, exc)
            except Exception:
                metrics.STREAM_ERRORS.labels(self._label, protocol, "handler").inc()
                log.exception("event=stream_handler_failed protocol=%s peer=%s", protocol, peer)
            finally:
                self.gate.release(str(peer))
                await framed.close()

        self.host.set_stream_handler(TProtocol(protocol), on_stream)

    @asynccontextmanager
    async def open_stream(self, peer_id: ID, protocol: str) -> AsyncIterator[FramedStream]:
        await self.ensure_connected(peer_id)
        for attempt in range(2):
            with trio.move_on_after(STREAM_OPEN_TIMEOUT) as scope:
                try:
                    stream = await self.host.new_stream(peer_id, [TProtocol(protocol)])
                except Exception as exc:
                    # A connection whose muxer died stays selectable until its own accept
                    # loop runs (adapter workaround 18): drop it, dial again, once.
                    if attempt == 0 and await self._heal(peer_id, exc):
                        continue
                    raise P2PError(f"cannot open {protocol} to {peer_id}: {exc}") from None
            if scope.cancelled_caught:
                raise P2PError(f"timed out opening {protocol} to {peer_id}")
            break
        framed = FramedStream(stream)
        try:
            yield framed
        finally:
            await framed.close()

    async def request(
        self,
        peer_id: ID,
        protocol: str,
        obj: Any,
        *,
        max_size: int = DEFAULT_MAX_FRAME,
        timeout: float = 10.0,
    ) -> Any:
        async with self.open_stream(peer_id, protocol) as framed:
            await framed.send(obj, timeout=timeout)
            return await framed.recv(max_size=max_size, timeout=timeout)


async def _reset(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:  # the peer already went away
        pass


def _msg_key(msg: Any) -> bytes:
    return bytes(msg.from_id) + bytes(msg.seqno)


@asynccontextmanager
async def open_host(
    identity: Identity,
    *,
    network: str,
    domain: Domain,
    options: HostOptions | None = None,
    roles: wire.RoleRegistry | None = None,
) -> AsyncIterator[KaisarHost]:
    host = KaisarHost(
        identity, network=network, domain=domain, options=options or HostOptions(), roles=roles
    )
    async with host._running():
        yield host
