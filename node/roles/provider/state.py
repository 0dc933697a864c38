"""The provider's durable state: jobs it runs and owner-token nonces it has seen.

One SQLite file (WAL) in the node's data_dir. A job row is written *before* its
container starts, so a crash between the two is found on restart (the container is
adopted or the job reported failed) and nothing started by this provider is unknown
to it. Nonces are stored until their token expires, so a replayed tunnel/logs/status
token is refused across restarts too.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,   -- uint256 as decimal text (SQLite ints are 64-bit)
    round       INTEGER NOT NULL,
    qc_digest   BLOB NOT NULL,
    qc_sigs     BLOB NOT NULL,      -- 65-byte signatures concatenated
    owner       TEXT NOT NULL,
    image       TEXT NOT NULL,
    port        INTEGER NOT NULL,
    gpus        TEXT NOT NULL,      -- slot ids, comma separated
    state       TEXT NOT NULL,      -- deploying | deployed | running | stopped | failed
    reason      TEXT NOT NULL DEFAULT '',
    container_id TEXT NOT NULL DEFAULT '',
    host_port   INTEGER,
    started     REAL NOT NULL,
    expires     REAL NOT NULL,
    updated     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    nonce   BLOB PRIMARY KEY,
    expiry  INTEGER NOT NULL
);
"""

LIVE_STATES = ("deploying", "deployed", "running")


@dataclass
class JobRecord:
    job_id: int
    round: int
    qc_digest: bytes
    qc_sigs: tuple[bytes, ...]
    owner: str
    image: str
    port: int
    gpus: tuple[str, ...]
    state: str
    reason: str
    container_id: str
    host_port: int | None
    started: float
    expires: float

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


class ProviderState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # jobs -----------------------------------------------------------------------

    def put_job(self, r: JobRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                str(r.job_id), r.round, r.qc_digest, b"".join(r.qc_sigs), r.owner, r.image,
                r.port, ",".join(r.gpus), r.state, r.reason, r.container_id, r.host_port,
                r.started, r.expires, time.time(),
            ),
        )

    def update_job(self, job_id: int, **fields: object) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(
            f"UPDATE jobs SET {cols}, updated = ? WHERE job_id = ?",
            (*fields.values(), time.time(), str(job_id)),
        )

    def get_job(self, job_id: int) -> JobRecord | None:
        row = self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (str(job_id),)).fetchone()
        return _record(row) if row else None

    def jobs(self, live_only: bool = False) -> list[JobRecord]:
        q = "SELECT * FROM jobs"
        if live_only:
            q += f" WHERE state IN ({','.join('?' * len(LIVE_STATES))})"
        rows = self.db.execute(q, LIVE_STATES if live_only else ()).fetchall()
        return [_record(r) for r in rows]

    # nonces ------------------------------------------------------------------------

    def use_nonce(self, nonce: bytes, expiry: int, now: float) -> bool:
        """Record a token nonce; False if it was used before (a replay)."""
        self.db.execute("DELETE FROM nonces WHERE expiry < ?", (int(now) - 60,))
        try:
            self.db.execute("INSERT INTO nonces VALUES (?, ?)", (nonce, expiry))
        except sqlite3.IntegrityError:
            return False
        return True


def _record(row: tuple) -> JobRecord:
    sigs = row[3]
    return JobRecord(
        job_id=int(row[0]),
        round=row[1],
        qc_digest=row[2],
        qc_sigs=tuple(sigs[i : i + 65] for i in range(0, len(sigs), 65)),
        owner=row[4],
        image=row[5],
        port=row[6],
        gpus=tuple(g for g in row[7].split(",") if g),
        state=row[8],
        reason=row[9],
        container_id=row[10],
        host_port=row[11],
        started=row[12],
        expires=row[13],
    )
