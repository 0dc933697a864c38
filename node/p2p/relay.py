"""Circuit relay v2: checkers offer hops, providers behind NAT hold reservations.

Two sides, both over py-libp2p's ``libp2p.relay.circuit_v2`` (spec:
libp2p/specs relay/circuit-v2.md):

- ``run_hop(host, HopSettings)``: the relay (a checker). Serves
  ``/libp2p/circuit/relay/0.2.0/hop`` with the limits of ``HopSettings``: how many
  peers may hold a reservation, how many circuits each may have open, and how long and
  how many bytes one circuit may carry before the relay resets it. The hop is
  ``adapter.RelayHopProtocol`` (upstream's with items 12-14 of adapter.py fixed).
- ``RelayClient(host, RelaySettings, on_change=...)``: the provider. Accepts relayed
  connections (the ``stop`` protocol), keeps ``count`` reservations on relays (the
  configured ones, else connected peers that advertise the hop protocol), refreshes
  them before they expire, replaces one whose relay went away, and calls
  ``on_change`` whenever the set of ``circuit_addrs()`` changes, so the provider's
  signed ad always names the relay addresses that work now.

A relay address is ``<relay transport addr>/p2p/<relay>/p2p-circuit/p2p/<provider>``;
``node.p2p.dial`` dials it after the direct addresses failed. Traffic through a relay
stays end-to-end encrypted (Noise runs over the circuit); the relay sees only byte
counts, and can only drop the circuit.

Mode (``provider.relay``): ``off`` never reserves; ``on`` always does; ``auto`` does
when none of the host's own addresses is a public IP (a node behind NAT or on a
private network).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.tools.anyio_service import background_trio_service

from node.p2p import adapter
from node.p2p.host import KaisarHost, P2PError

log = logging.getLogger("kaisar.relay")

MODES = ("off", "on", "auto")
CIRCUIT = "/p2p-circuit"
RESERVE_TIMEOUT = 10.0
REFRESH_FRACTION = 0.5  # refresh a reservation when half its lifetime is left
RETRY_AFTER_REFUSAL = 30.0  # seconds before asking a relay that refused again


class RelayRefused(P2PError):
    """A relay answered a reservation with a status other than OK."""

    def __init__(self, relay: ID, status: str) -> None:
        super().__init__(f"relay {relay} refused the reservation: {status}")
        self.status = status


# the relay (checker) ------------------------------------------------------------------


@dataclass(frozen=True)
class HopSettings:
    """What a checker's relay accepts; 0 for duration/bytes means unlimited."""

    enabled: bool = True
    max_reservations: int = 64  # peers holding a reservation at once
    max_circuits: int = 16  # open circuits per reserved peer
    circuit_duration: int = 3600  # seconds one circuit may live
    circuit_bytes: int = 1 << 30  # bytes one circuit may carry (both directions)
    reservation_ttl: int = 3600  # seconds; providers refresh at half of it

    def limits(self) -> RelayLimits:
        return RelayLimits(
            duration=self.circuit_duration,
            data=self.circuit_bytes,
            max_circuit_conns=self.max_circuits,
            max_reservations=self.max_reservations,
            reservation_ttl=self.reservation_ttl,
        )


async def run_hop(
    host: KaisarHost,
    settings: HopSettings,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the hop protocol until cancelled; ``task_status.started(protocol)``."""
    hop = adapter.RelayHopProtocol(host.host, settings.limits())
    async with background_trio_service(hop):
        await hop.event_started.wait()
        log.info(
            "event=relay_hop_started max_reservations=%d max_circuits=%d duration=%d bytes=%d",
            settings.max_reservations, settings.max_circuits,
            settings.circuit_duration, settings.circuit_bytes,
        )  # fmt: skip
        task_status.started(hop)
        await trio.sleep_forever()


def reservation_count(hop: CircuitV2Protocol) -> int:
    """Live reservations a running hop holds (for metrics and tests)."""
    rm = hop.resource_manager
    return sum(1 for p in list(rm._reservations) if rm.get_reservation(p) is not None)


# the provider -------------------------------------------------------------------------


@dataclass(frozen=True)
class RelaySettings:
    mode: str = "off"  # off | on | auto
    relays: tuple[str, ...] = ()  # relay multiaddrs with /p2p/<id>; empty: discover
    count: int = 2  # reservations to hold
    check_interval: float = 2.0  # seconds between checks of the reservations


@dataclass
class Reservation:
    relay: ID
    relay_addrs: list[str]  # the relay's own addresses, each ending in /p2p/<relay>
    expires: float  # unix seconds
    ttl: float

    def circuit_addrs(self, me: ID) -> list[str]:
        return [f"{a}{CIRCUIT}/p2p/{me.to_base58()}" for a in self.relay_addrs]


def is_circuit(addr: str) -> bool:
    return CIRCUIT in addr


def has_public_address(addrs: Sequence[str]) -> bool:
    """True if one of ``addrs`` is a public (globally routable) IP address."""
    for a in addrs:
        if is_circuit(a):
            continue
        try:
            ma = multiaddr.Multiaddr(a)
            ip = _ip_of(ma)
        except Exception:
            continue
        if ip is not None and ipaddress.ip_address(ip).is_global:
            return True
    return False


def _ip_of(ma: multiaddr.Multiaddr) -> str | None:
    for proto in ("ip4", "ip6"):
        try:
            return ma.value_for_protocol(proto)
        except Exception:
            continue
    return None


async def reserve(host: KaisarHost, relay: ID, *, timeout: float = RESERVE_TIMEOUT) -> Reservation:
    """One RESERVE exchange with a connected relay; raises P2PError / RelayRefused."""
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await host.host.new_stream(relay, [TProtocol(HOP_PROTOCOL)])
        except Exception as exc:
            raise P2PError(f"cannot open the hop protocol on {relay}: {exc}") from None
        try:
            await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
            resp = await read_delimited_msg(stream, HopMessage)
        except Exception as exc:
            raise P2PError(f"reservation with {relay} failed: {exc!r}") from None
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await stream.close()
                except Exception:
                    pass
    if scope.cancelled_caught:
        raise P2PError(f"relay {relay} did not answer the reservation in {timeout:g} s")
    status = StatusCode(resp.status) if resp.HasField("status") else StatusCode.OK
    if resp.type != HopMessage.STATUS or status != StatusCode.OK:
        raise RelayRefused(relay, status.name)
    now = time.time()
    expires = float(resp.reservation.expire) if resp.HasField("reservation") else now + 60
    addrs = []
    for raw in resp.reservation.addrs:
        try:
            a = str(multiaddr.Multiaddr(bytes(raw)))
        except Exception:
            continue
        if not is_circuit(a) and a.endswith(f"/p2p/{relay.to_base58()}"):
            addrs.append(a)
    return Reservation(relay, addrs, expires, max(expires - now, 1.0))


@dataclass
class RelayClient:
    """Hold ``settings.count`` reservations; ``circuit_addrs()`` go into the ad."""

    host: KaisarHost
    settings: RelaySettings
    on_change: Callable[[], None] = lambda: None
    held: dict[ID, Reservation] = field(default_factory=dict)
    _refused_until: dict[ID, float] = field(default_factory=dict)

    def wanted(self) -> bool:
        if self.settings.mode == "on":
            return True
        if self.settings.mode == "auto":
            return not has_public_address(self.host.addrs())
        return False

    def circuit_addrs(self) -> list[str]:
        me = self.host.peer_id
        return [a for r in self.held.values() for a in r.circuit_addrs(me)]

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Accept relayed connections and keep the reservations until cancelled."""
        stop = CircuitV2Protocol(self.host.host, allow_hop=False)  # the "stop" side
        async with background_trio_service(stop):
            await stop.event_started.wait()
            task_status.started(self)
            while True:
                try:
                    await self.check()
                except Exception:  # one bad round must not end the provider's relaying
                    log.exception("event=relay_check_failed")
                await trio.sleep(self.settings.check_interval)

    async def check(self) -> None:
        """One round: drop dead reservations, refresh old ones, fill up to ``count``."""
        before = self.circuit_addrs()
        now = time.time()
        connected = set(self.host.connected_peers())
        for relay, r in list(self.held.items()):
            if relay not in connected or r.expires <= now or not self.wanted():
                del self.held[relay]
                log.info("event=relay_reservation_lost relay=%s", relay)
            elif r.expires - now <= r.ttl * REFRESH_FRACTION:
                await self._reserve(relay, refresh=True)
        if self.wanted():
            for relay in await self.candidates():
                if len(self.held) >= self.settings.count:
                    break
                await self._reserve(relay, refresh=False)
        if self.circuit_addrs() != before:
            self.on_change()

    async def candidates(self) -> list[ID]:
        """Relays to try: the configured ones (dialled if needed), then connected peers
        that advertise the hop protocol (identify tells; checkers serve it)."""
        now = time.time()
        out: list[ID] = []
        for addr in self.settings.relays:
            try:
                peer = info_from_p2p_addr(multiaddr.Multiaddr(addr)).peer_id
            except Exception:
                log.warning("event=relay_addr_invalid addr=%s", addr)
                continue
            if peer in self.held or self._refused_until.get(peer, 0) > now:
                continue
            if peer not in self.host.connected_peers():
                try:
                    await self.host.connect(addr)
                except P2PError as exc:
                    log.info("event=relay_unreachable addr=%s err=%s", addr, exc)
                    self._refused_until[peer] = now + RETRY_AFTER_REFUSAL
                    continue
            out.append(peer)
        if self.settings.relays:
            return out
        store = self.host.host.get_peerstore()
        for peer in self.host.connected_peers():
            if peer in self.held or self._refused_until.get(peer, 0) > now:
                continue
            try:
                if store.supports_protocols(peer, [HOP_PROTOCOL]):
                    out.append(peer)
            except Exception:  # identify has not finished with this peer yet
                continue
        return out

    async def _reserve(self, relay: ID, *, refresh: bool) -> None:
        try:
            r = await reserve(self.host, relay)
        except P2PError as exc:
            self._refused_until[relay] = time.time() + RETRY_AFTER_REFUSAL
            if self.held.pop(relay, None) is not None or not refresh:
                log.info("event=relay_reservation_failed relay=%s err=%s", relay, exc)
            return
        if not r.relay_addrs:  # the relay named no address of its own: use how we reach it
            r.relay_addrs = self._known_addrs(relay)
        if not r.relay_addrs:
            log.info("event=relay_reservation_unusable relay=%s reason=no_address", relay)
            return
        self.held[relay] = r
        log.info(
            "event=relay_reserved relay=%s refresh=%s ttl=%.0f addrs=%s",
            relay, refresh, r.ttl, ",".join(r.relay_addrs),
        )  # fmt: skip

    def _known_addrs(self, relay: ID) -> list[str]:
        try:
            addrs = self.host.host.get_peerstore().addrs(relay)
        except Exception:
            return []
        suffix = f"/p2p/{relay.to_base58()}"
        return [f"{a}{suffix}" for a in map(str, addrs) if not is_circuit(a) and "/p2p/" not in a]
