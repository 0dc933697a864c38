"""`kaisar explorer`: an observer host, the indexer, the HTTP API and page, metrics.

``run_explorer(config, ...)`` opens one nursery holding everything the explorer runs:

- an observer libp2p host (fresh key: the explorer signs nothing) subscribed to every
  gossip topic; the host validates each message as nodes do and only accepted
  envelopes reach the indexer;
- a commit timer (the index is written in short batches, see store.py);
- optionally the contract event watcher, resuming a few blocks before the last block
  it had read (the (block hash, log index) key makes the overlap harmless);
- the HTTP server (Hypercorn's trio worker), whose URL ``task_status.started`` reports.

The index is committed and closed when the nursery exits (cancel, SIGINT/SIGTERM).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, cast

import trio
from libp2p.peer.id import ID

from node import metrics as node_metrics
from node import wire
from node.config import Config
from node.explorer.api import create_app
from node.explorer.indexer import Indexer, load_message_types
from node.explorer.store import Store
from node.identity import Identity
from node.p2p.host import TOPIC_TYPES, KaisarHost, open_host
from node.runner import domain_for, host_options

log = logging.getLogger("kaisar.explorer")

REORG_DEPTH = 12  # blocks re-read on resume (matches the watcher's default)


@dataclass
class Explorer:
    url: str
    host: KaisarHost
    store: Store
    indexer: Indexer


def rejected_total(node_label: str) -> int:
    """Gossip this host rejected (all topics and reasons), from the shared counter."""
    total = 0.0
    for family in node_metrics.GOSSIP_REJECTED.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("node") == node_label:
                total += sample.value
    return int(total)


async def _commit_loop(store: Store, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        store.commit()


async def _chain_loop(chain: Any, indexer: Indexer, confirmations: int, poll: float) -> None:
    from node.chain.errors import ChainError
    from node.chain.watcher import EventWatcher

    store = indexer.store
    scanned = int(store.get_meta("chain_scanned", "-1") or -1)
    watcher = EventWatcher(
        chain.client,
        chain.contracts(),
        from_block=max(0, scanned + 1 - REORG_DEPTH),
        confirmations=confirmations,
        reorg_depth=REORG_DEPTH,
        poll_interval=poll,
    )
    while True:
        try:
            events = await watcher.poll()
        except ChainError as exc:
            log.warning("event=chain_poll_failed err=%s", exc)
            await trio.sleep(poll)
            continue
        for ev in events:
            indexer.index_chain_event(ev)
        store.set_meta("chain_scanned", str(watcher.next_block - 1))
        await trio.sleep(poll if watcher.caught_up else 0)


async def open_chain(config: Config) -> Any | None:
    """The KaisarChain the config points at, or None (no RPC URL or no deployment)."""
    c = config.chain
    if not config.explorer.chain_events or not c.deployment or c.rpc == "embedded":
        return None
    from node.chain.api import KaisarChain

    return await KaisarChain.open(c.rpc, config.path(c.deployment))


async def run_explorer(
    config: Config,
    *,
    identity: Identity | None = None,
    chain: Any | None = None,
    db: str | None = None,
    chain_poll: float = 1.0,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the explorer until cancelled; ``task_status.started(Explorer)`` once serving.

    ``chain`` (a ``KaisarChain``) overrides the config's chain (tests, devnet);
    ``db`` overrides ``explorer.db``.
    """
    from hypercorn.config import Config as HyperConfig
    from hypercorn.trio import serve

    types = load_message_types()
    ex = config.explorer
    path = db if db is not None else ex.db
    store = Store(path if path == ":memory:" else config.path(path))
    indexer = Indexer(store)
    identity = identity or Identity.generate()
    if chain is None:
        chain = await open_chain(config)
    try:
        async with open_host(
            identity,
            network=config.node.network,
            domain=domain_for(config),
            options=host_options(config),
        ) as host:
            for suffix in TOPIC_TYPES:
                await host.subscribe(suffix, _handler(indexer, suffix))
            label = identity.address[:10]  # the host's metric label (KaisarHost)

            def live() -> dict:
                peers = len(host.connected_peers())
                node_metrics.PEERS.labels(label).set(peers)
                return {
                    "network": config.node.network,
                    "observer": identity.address,
                    "peers": peers,
                    "gossip_rejected": rejected_total(label),
                    "message_types": types,
                }

            if config.metrics.port:
                node_metrics.serve(config.metrics.port, config.metrics.host)
                log.info("event=metrics_serving port=%d", config.metrics.port)
            hc = HyperConfig()
            hc.bind = [f"{ex.http_host}:{ex.http_port}"]
            hc.accesslog = None
            hc.errorlog = None  # the explorer logs its own events
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_commit_loop, store, ex.commit_interval)
                if chain is not None:
                    nursery.start_soon(
                        _chain_loop, chain, indexer, config.chain.confirmations, chain_poll
                    )
                binds = await nursery.start(
                    functools.partial(serve, cast(Any, create_app(store, live=live)), hc)
                )
                url = binds[0] if binds else f"http://{ex.http_host}:{ex.http_port}"
                log.info("event=explorer_started url=%s peer_id=%s db=%s", url, host.peer_id, path)
                task_status.started(Explorer(url, host, store, indexer))
    finally:
        store.close()


def _handler(indexer: Indexer, suffix: str):
    async def on_message(env: wire.Envelope, peer: ID) -> None:
        indexer.index_envelope(env, suffix)

    return on_message
