"""What the explorer makes of each accepted envelope and each contract event.

Validation is not here: envelopes reach ``index_envelope`` only through
``KaisarHost.subscribe`` (or ``wire.decode`` in the benchmark), which runs exactly the
checks every node runs; rejected gossip is counted by the host
(``kaisar_gossip_rejected_total``) and never reaches the index.

Every registered message type is stored generically (type, signer, body). Known types
also update the overview tables:

- ``Heartbeat`` (status/1): a provider or checker is alive, with its peer id;
- ``ProviderAd`` (ads/1): the provider's latest ad (higher ``seq`` wins);
- ``JobStatus`` (status/1): a job status event, and the job's latest status;
- attestations (any attest/1 type with ``provider`` and ``verdict`` fields): the
  provider's PoPW standing and measured TFLOPS (newest ``issued`` wins);
- assignments (any assign/1 type with ``job_id`` and ``provider``): the job's provider
  and round; a list field ``signers`` is recorded as the checkers who signed the QC.

Chain events (``node.chain.watcher.ChainEvent``) update jobs (Escrow), checkers
(Staking) and PoPW certifications (Rewards).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from eth_utils import to_checksum_address

from node import wire
from node.explorer import metrics
from node.explorer.store import JOB_STATES, Store, dumps

log = logging.getLogger("kaisar.explorer")

TFLOPS_FIELDS = ("tflops", "measured_tflops", "tflops_milli", "mtflops")
MILLI_FIELDS = ("tflops_milli", "mtflops")
JOB_ID_MAX_SORT = (1 << 63) - 1

# Area modules that register message types on import. The explorer imports each one
# that exists, so it subscribes to (and validates) every type the network speaks.
# Modules that register gossip message types (wire.register + TOPIC_TYPES). A new
# area that gossips adds its messages module here so the explorer validates and
# indexes its types.
MESSAGE_MODULES = (
    "node.roles.provider.messages",
    "node.roles.checker.messages",
)


def load_message_types() -> list[str]:
    """Import every known message module; returns the type names now registered."""
    import importlib

    for name in MESSAGE_MODULES:
        importlib.import_module(name)
    return sorted(wire.REGISTRY)


def _addr(value: Any) -> str:
    """An address field (20 bytes or hex string) as a checksummed string."""
    if isinstance(value, bytes) and len(value) == 20:
        return to_checksum_address(value)
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        try:
            return to_checksum_address(value)
        except ValueError:
            return value
    return str(value)


def _class_name(value: Any) -> str:
    if isinstance(value, bytes):
        return value.rstrip(b"\x00").decode("ascii", "replace")
    return str(value)


class Indexer:
    def __init__(self, store: Store) -> None:
        self.store = store

    # gossip ------------------------------------------------------------------------

    def index_envelope(self, env: wire.Envelope, topic: str) -> bool:
        """Index one validated envelope; False if it was already indexed (no change)."""
        if not self.store.add_message(env.digest, env.type, topic, env.signer, env.body):
            metrics.DUPLICATES.inc()
            return False
        metrics.INDEXED.labels(env.type).inc()
        handler = getattr(self, f"_on_{env.type}", None)
        if handler is not None:
            handler(env)
        elif topic == "attest/1" and {"provider", "verdict"} <= set(env.body):
            self._on_attestation(env)
        elif topic == "assign/1" and {"job_id", "provider"} <= set(env.body):
            self._on_assignment(env)
        return True

    def _on_Heartbeat(self, env: wire.Envelope) -> None:
        b = env.body
        now = time.time()
        if b["role"] == "provider":
            self.store.execute(
                "INSERT INTO providers(address, peer, addrs, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(address) DO UPDATE SET peer = excluded.peer, "
                "addrs = CASE WHEN providers.ad_seq < 0 THEN excluded.addrs ELSE providers.addrs END, "
                "last_seen = MAX(providers.last_seen, excluded.last_seen)",
                (env.signer, b["peer"], dumps(b["addrs"]), now),
            )
        elif b["role"] == "checker":
            self.store.execute(
                "INSERT INTO checkers(address, peer, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT(address) DO UPDATE SET peer = excluded.peer, "
                "last_seen = MAX(checkers.last_seen, excluded.last_seen)",
                (env.signer, b["peer"], now),
            )

    def _on_ProviderAd(self, env: wire.Envelope) -> None:
        b = env.body
        self.store.execute(
            "INSERT INTO providers(address, peer, addrs, gpu_class, price_per_gpu_hour_wei,"
            " gpus_total, gpus_free, accepting, inventory, ad_seq, ad_expiry, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(address) DO UPDATE SET "
            "peer = excluded.peer, addrs = excluded.addrs, gpu_class = excluded.gpu_class,"
            " price_per_gpu_hour_wei = excluded.price_per_gpu_hour_wei,"
            " gpus_total = excluded.gpus_total, gpus_free = excluded.gpus_free,"
            " accepting = excluded.accepting, inventory = excluded.inventory,"
            " ad_seq = excluded.ad_seq, ad_expiry = excluded.ad_expiry,"
            " last_seen = MAX(providers.last_seen, excluded.last_seen) "
            "WHERE excluded.ad_seq > providers.ad_seq",
            (
                env.signer,
                b["peer"],
                dumps(b["addrs"]),
                b["gpu_class"],
                str(b["price_per_gpu_hour_wei"]),
                b["gpus_total"],
                b["gpus_free"],
                int(b["accepting"]),
                dumps(b["inventory"]),
                min(b["seq"], JOB_ID_MAX_SORT),
                min(b["expiry"], JOB_ID_MAX_SORT),
                time.time(),
            ),
        )

    def _on_JobStatus(self, env: wire.Envelope) -> None:
        b = env.body
        job = str(b["job_id"])
        self.store.execute(
            "INSERT OR IGNORE INTO status_events(digest, job_id, provider, state, reason, issued)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (env.digest, job, env.signer, b["state"], b["reason"], b["issued"]),
        )
        self._upsert_job(job, provider=env.signer, round=min(b["round"], JOB_ID_MAX_SORT))
        # the job's status is its newest status event
        self.store.execute(
            "UPDATE jobs SET status = (SELECT state FROM status_events WHERE job_id = ?"
            " ORDER BY issued DESC LIMIT 1) WHERE job_id = ?",
            (job, job),
        )

    def _on_attestation(self, env: wire.Envelope) -> None:
        b = env.body
        provider = _addr(b["provider"])
        verdict = b["verdict"]
        verdict = (
            {1: "pass", 2: "fail"}.get(verdict, str(verdict))
            if isinstance(verdict, int)
            else str(verdict)
        )
        name = next((f for f in TFLOPS_FIELDS if type(b.get(f)) in (int, float)), None)
        tflops = None if name is None else b[name] / (1000 if name in MILLI_FIELDS else 1)
        issued = b["issued"] / 1000
        self._touch_provider(provider)
        self.store.execute(
            "UPDATE providers SET popw_verdict = ?, popw_tflops = COALESCE(?, popw_tflops),"
            " popw_at = ? WHERE address = ? AND (popw_at IS NULL OR popw_at <= ?)",
            (verdict, tflops, issued, provider, issued),
        )

    def _on_assignment(self, env: wire.Envelope) -> None:
        b = env.body
        job = str(b["job_id"])
        rnd = b.get("round", 0)
        self._upsert_job(
            job, provider=_addr(b["provider"]), round=rnd if isinstance(rnd, int) else 0
        )

    # chain -------------------------------------------------------------------------

    def index_chain_event(self, ev: Any) -> bool:
        """Index one ``ChainEvent``; False if (block hash, log index) was already indexed."""
        fresh = self.store.add_chain_event(
            ev.block_hash, ev.log_index, ev.name, ev.address, ev.block_number, ev.tx_hash, ev.args
        )
        last = int(self.store.get_meta("chain_block", "-1") or -1)
        if ev.block_number > last:
            self.store.set_meta("chain_block", str(ev.block_number))
        if not fresh:
            metrics.DUPLICATES.inc()
            return False
        metrics.CHAIN_EVENTS.labels(ev.name).inc()
        # Derived rows are "set", never "add": a reorged event re-delivered is harmless.
        handler = getattr(self, f"_chain_{ev.name}", None)
        if handler is not None:
            handler(ev.args, ev)
        return True

    def _chain_JobCreated(self, a: dict, ev: Any) -> None:
        job = str(a["job_id"])
        self._upsert_job(job)
        self.store.execute(
            "UPDATE jobs SET owner = ?, gpu_class = ?, count = ?, image = ?, port = ?,"
            " duration = ?, created_block = ? WHERE job_id = ?",
            (
                _addr(a["owner"]),
                _class_name(a["gpu_class"]),
                int(a["count"]),
                a["image"],
                int(a["port"]),
                min(int(a["duration"]), JOB_ID_MAX_SORT),
                ev.block_number,
                job,
            ),
        )

    def _chain_JobAssigned(self, a: dict, ev: Any) -> None:
        self._upsert_job(str(a["job_id"]), provider=_addr(a["provider"]), round=int(a["round"]))
        self.store.execute(
            "UPDATE jobs SET state = 'assigned' WHERE job_id = ? AND state = 'open'",
            (str(a["job_id"]),),
        )

    def _chain_JobReassigned(self, a: dict, ev: Any) -> None:
        self._upsert_job(str(a["job_id"]), round=int(a["round"]))
        self.store.execute(
            "UPDATE jobs SET state = 'open', provider = '' WHERE job_id = ? AND state = 'assigned'",
            (str(a["job_id"]),),
        )

    def _chain_JobClosed(self, a: dict, ev: Any) -> None:
        self._upsert_job(str(a["job_id"]))
        self.store.execute(
            "UPDATE jobs SET state = ? WHERE job_id = ?",
            (JOB_STATES.get(int(a["state"]), str(a["state"])), str(a["job_id"])),
        )

    def _chain_Registered(self, a: dict, ev: Any) -> None:
        key = _addr(a["node_key"])
        self._touch_checker(key)
        self.store.execute(
            "UPDATE checkers SET registered = 1, operator = ? WHERE address = ?",
            (_addr(a["operator"]), key),
        )

    def _chain_Unregistered(self, a: dict, ev: Any) -> None:
        self.store.execute(
            "UPDATE checkers SET registered = 0 WHERE address = ?", (_addr(a["node_key"]),)
        )

    def _chain_Staked(self, a: dict, ev: Any) -> None:
        key = _addr(a["node_key"])
        self._touch_checker(key)
        self.store.execute(
            "UPDATE checkers SET stake = ? WHERE address = ?", (str(int(a["total"])), key)
        )

    def _chain_Certified(self, a: dict, ev: Any) -> None:
        provider = _addr(a["provider"])
        self._touch_provider(provider)
        self.store.execute(
            "UPDATE providers SET popw_verdict = 'certified',"
            " gpu_class = CASE WHEN gpu_class = '' THEN ? ELSE gpu_class END WHERE address = ?",
            (_class_name(a["gpu_class"]), provider),
        )

    # helpers -------------------------------------------------------------------------

    def _upsert_job(
        self, job: str, *, provider: str | None = None, round: int | None = None
    ) -> None:
        num = min(int(job), JOB_ID_MAX_SORT)
        self.store.execute(
            "INSERT INTO jobs(job_id, job_num, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(job_id) DO UPDATE SET updated = excluded.updated",
            (job, num, time.time()),
        )
        if provider is not None:
            self.store.execute("UPDATE jobs SET provider = ? WHERE job_id = ?", (provider, job))
        if round is not None:
            self.store.execute(
                "UPDATE jobs SET round = MAX(round, ?) WHERE job_id = ?",
                (min(round, JOB_ID_MAX_SORT), job),
            )

    def _touch_provider(self, address: str) -> None:
        self.store.execute(
            "INSERT OR IGNORE INTO providers(address, last_seen) VALUES (?, ?)",
            (address, time.time()),
        )

    def _touch_checker(self, address: str) -> None:
        self.store.execute(
            "INSERT OR IGNORE INTO checkers(address, last_seen) VALUES (?, ?)",
            (address, 0.0),
        )
