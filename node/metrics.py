"""Prometheus metrics shared by every role (one registry per process).

Counters are labelled by node address so several nodes in one process (devnet,
tests) do not mix. ``serve(port)`` exposes them over HTTP.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

GOSSIP_IN = Counter(
    "kaisar_gossip_in_total", "Gossip messages accepted", ["node", "topic"], registry=REGISTRY
)
GOSSIP_OUT = Counter(
    "kaisar_gossip_out_total", "Gossip messages published", ["node", "topic"], registry=REGISTRY
)
GOSSIP_REJECTED = Counter(
    "kaisar_gossip_rejected_total",
    "Gossip messages rejected by validation",
    ["node", "topic", "reason"],
    registry=REGISTRY,
)
STREAM_ERRORS = Counter(
    "kaisar_stream_errors_total",
    "Stream protocol requests that failed",
    ["node", "protocol", "reason"],
    registry=REGISTRY,
)
STREAMS_LIMITED = Counter(
    "kaisar_streams_limited_total",
    "Inbound streams reset unread by the per-peer gate (node/p2p/limits.py)",
    ["node", "protocol", "reason"],
    registry=REGISTRY,
)
PEERS = Gauge("kaisar_peers", "Connected peers", ["node"], registry=REGISTRY)
POPW_VERDICTS = Counter(
    "kaisar_popw_verdicts_total",
    "PoPW challenges this checker ran, by verdict",
    ["node", "verdict"],
    registry=REGISTRY,
)
QCS = Counter(
    "kaisar_qcs_total", "Quorum certificates formed, by kind", ["node", "kind"], registry=REGISTRY
)
CONTAINERS = Gauge(
    "kaisar_containers", "Job containers this provider runs", ["node"], registry=REGISTRY
)
TUNNELS = Gauge("kaisar_tunnels", "Open tunnels to job containers", ["node"], registry=REGISTRY)


def label(address: str) -> str:
    """The node label every metric uses: the first 10 characters of the address."""
    return address[:10]


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Start the metrics HTTP endpoint (a daemon thread owned by prometheus_client)."""
    start_http_server(port, addr=host, registry=REGISTRY)
