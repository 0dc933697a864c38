"""Reaching a peer: its direct addresses first, then its relay addresses.

``connect(host, peer, addrs)`` is the one way Kaisar dials a provider (client API,
the checker's deploy sender and PoPW challenger, and ``KaisarHost.ensure_connected``
for every stream opener). It keeps an existing connection; otherwise it tries the
direct addresses (from ``addrs``, else the peerstore / DHT), then each
``.../p2p-circuit/p2p/<peer>`` address through ``CircuitV2Transport.dial`` (the
provider's reservation on that relay carries the connection). The relay addresses a
call was given are remembered per host, so a later stream to the same peer (a tunnel
after the circuit was reset) can dial through the relay again without the ad.

Errors: ``P2PError`` naming every address tried and why it failed.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.transport import CircuitV2Transport

from node.p2p.host import DIAL_TIMEOUT, KaisarHost, P2PError

log = logging.getLogger("kaisar.p2p.dial")

CIRCUIT = "/p2p-circuit"
DIRECT_TIMEOUT_BEFORE_RELAY = 5.0  # a direct dial that hangs this long: try the relays
RELAY_DIAL_TIMEOUT = DIAL_TIMEOUT
MAX_REMEMBERED = 16  # relay addresses kept per peer
RELAY_ATTEMPTS = 2  # circuits tried per relay address
RELAY_RETRY_DELAY = 0.2


class _Dialer:
    """Per-host state: the relay transport (made on first use) and learned relay addrs."""

    def __init__(self, host: KaisarHost) -> None:
        self.host = host
        self.relay_addrs: dict[ID, list[str]] = {}
        self._transport: CircuitV2Transport | None = None

    def transport(self) -> CircuitV2Transport:
        if self._transport is None:
            # A dialer only: no reservation of its own (RelayRole.CLIENT would make one
            # on every relay it dials through), no hop; the protocol is never started.
            h = self.host.host
            self._transport = CircuitV2Transport(
                h, CircuitV2Protocol(h, allow_hop=False), RelayConfig(roles=RelayRole.STOP)
            )
        return self._transport

    def learn(self, peer: ID, relayed: Sequence[str]) -> None:
        if relayed:
            self.relay_addrs[peer] = list(dict.fromkeys(relayed))[:MAX_REMEMBERED]


_dialers: weakref.WeakKeyDictionary[KaisarHost, _Dialer] = weakref.WeakKeyDictionary()


def _dialer(host: KaisarHost) -> _Dialer:
    d = _dialers.get(host)
    if d is None:
        d = _dialers[host] = _Dialer(host)
    return d


def split_addrs(peer: ID, addrs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(direct, relayed) addresses of ``peer``; each ends in ``/p2p/<peer>``.

    Direct addresses without a peer part get one; an address that names another peer
    as its target, or is not a multiaddr, is dropped (an ad cannot send us elsewhere).
    """
    me = f"/p2p/{peer.to_base58()}"
    direct: list[str] = []
    relayed: list[str] = []
    for a in addrs:
        try:
            multiaddr.Multiaddr(a)
        except Exception:
            continue
        if CIRCUIT in a:
            if a.endswith(CIRCUIT + me) and not a.startswith(CIRCUIT):
                relayed.append(a)
        elif "/p2p/" not in a:
            direct.append(a + me)
        elif a.endswith(me) and a.count("/p2p/") == 1:
            direct.append(a)
    return direct, relayed


def is_relayed(host: KaisarHost, peer: ID) -> bool:
    """True if every open connection to ``peer`` runs through a relay."""
    conns = host.host.get_network().get_connections(peer)
    if not conns:
        return False
    return all(
        any(CIRCUIT in str(a) for a in (c.get_transport_addresses() or [])) for c in conns
    )


def stream_is_relayed(stream: object) -> bool:
    """True if a libp2p stream runs over a relayed (p2p-circuit) connection.

    Such a stream's ``get_remote_address()`` is the *relay's* socket address, not the
    peer's: nothing may use it to reach the peer directly."""
    conn = getattr(stream, "muxed_conn", None)
    try:
        if conn.get_connection_type() == ConnectionType.RELAYED:  # type: ignore[union-attr]
            return True
        return any(CIRCUIT in str(a) for a in conn.get_transport_addresses() or [])  # type: ignore[union-attr]
    except Exception:
        return False


async def connect(host: KaisarHost, peer: ID, addrs: Sequence[str] = ()) -> ID:
    """Connect to ``peer`` (no-op when connected): direct addresses, then relays."""
    if peer in host.connected_peers():
        return peer
    d = _dialer(host)
    direct, relayed = split_addrs(peer, addrs)
    d.learn(peer, relayed)
    relayed = relayed or d.relay_addrs.get(peer, [])
    errors: list[str] = []
    timeout = DIRECT_TIMEOUT_BEFORE_RELAY if relayed else DIAL_TIMEOUT
    with trio.move_on_after(timeout):
        try:
            if direct:
                await host.connect(
                    PeerInfo(peer, [multiaddr.Multiaddr(a) for a in direct])
                )
                return peer
            info = await host.find_peer(peer)  # peerstore, then the DHT
            usable = [a for a in (info.addrs if info else []) if CIRCUIT not in str(a)]
            if usable:
                await host.connect(PeerInfo(peer, usable))
                return peer
            errors.append("no direct address")
        except P2PError as exc:
            errors.append(f"direct: {exc}")
    if not errors:
        errors.append(f"direct: no answer in {timeout:g} s")
    for addr in relayed:
        for attempt in range(RELAY_ATTEMPTS):
            try:
                await _dial_relayed(d, addr)
                log.info("event=dialed_via_relay peer=%s addr=%s", peer, addr)
                return peer
            except P2PError as exc:
                # seen under heavy CPU load: the circuit is up but the muxer handshake
                # over it fails ("failed to upgrade mux"); a second circuit then works
                log.info("event=relay_dial_failed peer=%s attempt=%d err=%s", peer, attempt, exc)
                if attempt + 1 == RELAY_ATTEMPTS:
                    errors.append(f"relay {addr}: {exc}")
                else:
                    await trio.sleep(RELAY_RETRY_DELAY)
    raise P2PError(f"cannot reach {peer}: " + "; ".join(errors))


async def _dial_relayed(d: _Dialer, addr: str) -> None:
    with trio.move_on_after(RELAY_DIAL_TIMEOUT) as scope:
        try:
            await d.transport().dial(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise P2PError(str(exc) or type(exc).__name__) from None
    if scope.cancelled_caught:
        raise P2PError(f"no circuit in {RELAY_DIAL_TIMEOUT:g} s")
