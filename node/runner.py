"""Node lifecycle: `kaisar node --role provider|checker --config FILE`.

``run_node`` opens the host, subscribes to the status topic, gossips a signed
heartbeat every ``p2p.heartbeat_interval`` and keeps a table of peers heard from.
Role behaviours (provider, checker) plug in as ``role_services``: async callables
started in the node's nursery once the host is up. SIGINT/SIGTERM cancel the nursery;
the host closes its listeners and streams on the way out (well under 2 s).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from node import metrics, wire
from node.config import Config
from node.eip712 import Domain
from node.identity import Identity
from node.p2p import adapter
from node.p2p.host import HostOptions, KaisarHost, P2PError, open_host
from node.p2p.limits import StreamLimits

log = logging.getLogger("kaisar.node")

RoleService = Callable[[KaisarHost], Awaitable[None]]


@dataclass
class PeerView:
    """What this node has heard on the status topic (address -> last heartbeat)."""

    heard: dict[str, dict] = field(default_factory=dict)

    def on_heartbeat(self, env: wire.Envelope) -> None:
        self.heard[env.signer] = {
            "role": env.body["role"],
            "peer": env.body["peer"],
            "addrs": env.body["addrs"],
            "seq": env.body["seq"],
            "at": time.time(),
        }


def host_options(config: Config) -> HostOptions:
    p = config.p2p
    return HostOptions(
        listen=list(p.listen),
        bootstrap=list(p.bootstrap),
        gossip=adapter.GossipParams(
            p.gossip_degree, p.gossip_degree_low, p.gossip_degree_high, p.gossip_heartbeat
        ),
        dht=p.dht,
        max_message_size=p.max_message_size,
        stream_limits=StreamLimits(
            rate=p.stream_rate,
            burst=p.stream_burst,
            per_peer=p.max_streams_per_peer,
            total=p.max_inbound_streams,
        ),
    )


def domain_for(config: Config, verifying_contract: str | None = None) -> Domain:
    if verifying_contract:
        return Domain(config.chain.chain_id, verifying_contract)
    return Domain(config.chain.chain_id)


async def heartbeat_loop(host: KaisarHost, role: str, interval: float) -> None:
    while True:
        metrics.PEERS.labels(metrics.label(host.address)).set(len(host.connected_peers()))
        env = host.sign(
            "Heartbeat",
            {"role": role, "peer": host.peer_id.to_base58(), "addrs": host.addrs()[:16]},
            ttl_ms=max(int(interval * 3000), 5000),
        )
        try:
            await host.publish("status/1", env)
        except Exception as exc:  # no peers yet, stream reset: try again next beat
            log.debug("event=heartbeat_publish_failed err=%s", exc)
        await trio.sleep(interval)


async def run_node(
    config: Config,
    identity: Identity,
    *,
    role: str,
    role_services: Sequence[RoleService] = (),
    view: PeerView | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    view = view if view is not None else PeerView()
    async with open_host(
        identity, network=config.node.network, domain=domain_for(config), options=host_options(config)
    ) as host:
        log.info(
            "event=node_started role=%s peer_id=%s address=%s addrs=%s",
            role,
            host.peer_id.to_base58(),
            identity.address,
            ",".join(host.addrs()),
        )

        async def on_status(env: wire.Envelope, peer: ID) -> None:
            if env.type == "Heartbeat" and env.signer != identity.address:
                first = env.signer not in view.heard
                view.on_heartbeat(env)
                if first:
                    log.info(
                        "event=peer_heard role=%s address=%s peer=%s",
                        env.body["role"],
                        env.signer,
                        env.body["peer"],
                    )

        await host.subscribe("status/1", on_status)
        if config.metrics.port:
            try:
                metrics.serve(config.metrics.port, config.metrics.host)
            except OSError as exc:
                raise P2PError(f"metrics port {config.metrics.port}: {exc.strerror}") from None
            log.info("event=metrics_serving addr=%s:%d", config.metrics.host, config.metrics.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat_loop, host, role, config.p2p.heartbeat_interval)
            for service in role_services:
                nursery.start_soon(service, host)
            task_status.started(host)


async def run_until_signal(main: Callable[..., Awaitable[None]], *args, **kwargs) -> None:
    """Run ``main`` until it returns or SIGINT/SIGTERM arrives, then cancel it cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    log.info("event=shutdown signal=%s", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await main(*args, **kwargs)
            nursery.cancel_scope.cancel()
