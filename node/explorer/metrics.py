"""The explorer's Prometheus counters, on the process-wide ``node.metrics.REGISTRY``.

Gossip in/rejected (by reason) are the host's own counters
(``kaisar_gossip_in_total``, ``kaisar_gossip_rejected_total``) labelled with the
explorer's observer address; these add what the index did with what it accepted.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from node.metrics import REGISTRY

INDEXED = Counter(
    "kaisar_explorer_indexed_total",
    "Gossip messages newly indexed, by message type",
    ["type"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "kaisar_explorer_duplicates_total",
    "Messages or chain events already in the index (ignored)",
    registry=REGISTRY,
)
CHAIN_EVENTS = Counter(
    "kaisar_explorer_chain_events_total",
    "Contract events newly indexed, by event name",
    ["event"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "kaisar_explorer_http_requests_total",
    "API requests, by route and status code",
    ["route", "status"],
    registry=REGISTRY,
)
PROVIDERS = Gauge("kaisar_explorer_providers", "Providers in the index", registry=REGISTRY)
CHECKERS = Gauge("kaisar_explorer_checkers", "Checkers in the index", registry=REGISTRY)
