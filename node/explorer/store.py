"""The explorer's SQLite index (WAL): what was gossiped and what the chain emitted.

Rows are keyed so that seeing the same thing twice changes nothing:

- every accepted gossip envelope once, by its EIP-712 digest (``messages``);
- every chain log once, by (block hash, log index) (``chain_events``);
- derived tables (``providers``, ``checkers``, ``jobs``, ``status_events``) are
  upserts of "latest value" rows, never increments, so a message or event indexed
  again after a restart (or a reorg that re-delivers a log under a new block hash)
  cannot double count. Counts (attestations, QCs signed, verified share) are queries
  over ``messages``.

Writes go into one open transaction that ``commit()`` closes; the indexer commits on a
short timer (batching makes indexing ~10x faster than a commit per message). A crash
loses at most the uncommitted batch; gossip and the chain re-deliver what matters
(ads are periodic; the chain watcher resumes from the last committed block).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    digest BLOB PRIMARY KEY,
    type TEXT NOT NULL,
    topic TEXT NOT NULL,
    signer TEXT NOT NULL,
    seq INTEGER NOT NULL,
    issued INTEGER NOT NULL,
    expiry INTEGER NOT NULL,
    body TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_type ON messages(type, signer);
CREATE INDEX IF NOT EXISTS messages_received ON messages(received);
CREATE TABLE IF NOT EXISTS providers (
    address TEXT PRIMARY KEY,
    peer TEXT NOT NULL DEFAULT '',
    addrs TEXT NOT NULL DEFAULT '[]',
    gpu_class TEXT NOT NULL DEFAULT '',
    price_per_gpu_hour_wei TEXT NOT NULL DEFAULT '0',
    gpus_total INTEGER NOT NULL DEFAULT 0,
    gpus_free INTEGER NOT NULL DEFAULT 0,
    accepting INTEGER NOT NULL DEFAULT 0,
    inventory TEXT NOT NULL DEFAULT '{}',
    ad_seq INTEGER NOT NULL DEFAULT -1,
    ad_expiry INTEGER NOT NULL DEFAULT 0,
    popw_verdict TEXT NOT NULL DEFAULT '',
    popw_tflops REAL,
    popw_at REAL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkers (
    address TEXT PRIMARY KEY,
    peer TEXT NOT NULL DEFAULT '',
    operator TEXT NOT NULL DEFAULT '',
    stake TEXT NOT NULL DEFAULT '0',
    registered INTEGER NOT NULL DEFAULT 0,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    job_num INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    gpu_class TEXT NOT NULL DEFAULT '',
    count INTEGER NOT NULL DEFAULT 0,
    image TEXT NOT NULL DEFAULT '',
    port INTEGER NOT NULL DEFAULT 0,
    duration INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'open',
    provider TEXT NOT NULL DEFAULT '',
    round INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT '',
    created_block INTEGER,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS status_events (
    digest BLOB PRIMARY KEY,
    job_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    issued INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS status_events_job ON status_events(job_id, issued);
CREATE TABLE IF NOT EXISTS chain_events (
    block_hash BLOB NOT NULL,
    log_index INTEGER NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    block_number INTEGER NOT NULL,
    tx_hash BLOB NOT NULL,
    args TEXT NOT NULL,
    PRIMARY KEY (block_hash, log_index)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Escrow job states (node.chain.api JOB_*), by name for the API
JOB_STATES = {1: "open", 2: "assigned", 3: "closed", 4: "done", 5: "failed", 6: "expired"}


def jsonable(value: Any) -> Any:
    """Plain JSON for message bodies and event args: bytes as 0x-hex, big ints as strings."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return value
    if isinstance(value, int):
        return value if -(2**53) < value < 2**53 else str(value)
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value), separators=(",", ":"), sort_keys=True)


class Store:
    """One SQLite connection, used from the trio thread only."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._in_tx = False

    # transactions --------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_tx:
            self.db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False

    def close(self) -> None:
        self.commit()
        self.db.close()

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """A write inside the current batch."""
        self._begin()
        return self.db.execute(sql, params)

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute(sql, params).fetchall()]

    # meta ----------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # raw records (the dedupe keys) ---------------------------------------------------

    def add_message(self, digest: bytes, type_: str, topic: str, signer: str, body: dict) -> bool:
        """Record an accepted envelope; False if this digest is already indexed."""
        cur = self.execute(
            "INSERT OR IGNORE INTO messages"
            "(digest, type, topic, signer, seq, issued, expiry, body, received)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                digest,
                type_,
                topic,
                signer,
                _int64(body.get("seq", 0)),
                _int64(body.get("issued", 0)),
                _int64(body.get("expiry", 0)),
                dumps(body),
                time.time(),
            ),
        )
        return cur.rowcount == 1

    def add_chain_event(
        self,
        block_hash: bytes,
        log_index: int,
        name: str,
        address: str,
        block_number: int,
        tx_hash: bytes,
        args: dict,
    ) -> bool:
        """Record a contract log; False if (block hash, log index) is already indexed."""
        cur = self.execute(
            "INSERT OR IGNORE INTO chain_events"
            "(block_hash, log_index, name, address, block_number, tx_hash, args)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (block_hash, log_index, name, address, block_number, tx_hash, dumps(args)),
        )
        return cur.rowcount == 1

    def count(self, table: str) -> int:
        assert table in (
            "messages",
            "chain_events",
            "providers",
            "checkers",
            "jobs",
            "status_events",
        )
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _int64(value: Any) -> int:
    # SQLite integers are signed 64-bit; uint64 header fields above that are clamped
    return min(int(value), (1 << 63) - 1) if isinstance(value, int) else 0
