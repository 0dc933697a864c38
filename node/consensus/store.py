"""Durable record of this checker's own votes (SQLite, WAL, synchronous=FULL).

A checker that restarts must never sign against a vote it already sent. So the machine
calls ``record_assign_prevote`` / ``record_assign_vote`` / ``record_popw_vote`` and only after it returns (the row
is committed and fsynced) lets the signature leave the process. The store itself
refuses a second, different vote for the same (job, round) or (epoch, provider).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from node.consensus.assignment import Lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS assign_votes (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, provider TEXT NOT NULL,
    signature BLOB NOT NULL, PRIMARY KEY (job_id, round));
CREATE TABLE IF NOT EXISTS assign_prevotes (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, provider TEXT NOT NULL,
    signature BLOB NOT NULL, PRIMARY KEY (job_id, round));
CREATE TABLE IF NOT EXISTS assign_qc_seen (job_id TEXT PRIMARY KEY, provider TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS popw_votes (
    epoch INTEGER NOT NULL, provider TEXT NOT NULL, verdict INTEGER NOT NULL,
    gpu_class BLOB NOT NULL, signature BLOB NOT NULL, PRIMARY KEY (epoch, provider));
"""


class VoteConflict(Exception):
    """Refused: this checker already signed something else for the same subject."""


@dataclass(frozen=True)
class StoredAssignVote:
    job_id: int
    round: int
    provider: str
    signature: bytes


class VoteStore:
    """Own votes and locks. One instance per checker key; not shared between threads."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    @classmethod
    def open(cls, path: str | Path) -> VoteStore:
        return cls(path)

    def close(self) -> None:
        self._db.close()

    # assignment votes -----------------------------------------------------

    def record_assign_vote(self, job_id: int, round_: int, provider: str, signature: bytes) -> None:
        """Commit the precommit (AssignVote); VoteConflict if (job, round) has another provider."""
        self._record_once("assign_votes", job_id, round_, provider, signature)

    def record_assign_prevote(
        self, job_id: int, round_: int, provider: str, signature: bytes
    ) -> None:
        """Commit the prevote; raise VoteConflict if (job, round) already has another provider."""
        self._record_once("assign_prevotes", job_id, round_, provider, signature)

    def _record_once(
        self, table: str, job_id: int, round_: int, provider: str, signature: bytes
    ) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                f"SELECT provider FROM {table} WHERE job_id=? AND round=?",
                (str(job_id), round_),
            ).fetchone()
            if row is not None:
                if row[0] != provider:
                    raise VoteConflict(f"job {job_id} round {round_}: already voted {row[0]}")
                db.execute("COMMIT")
                return
            db.execute(
                f"INSERT INTO {table} VALUES (?,?,?,?)",
                (str(job_id), round_, provider, signature),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def record_assign_qc_seen(self, job_id: int, provider: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO assign_qc_seen VALUES (?,?)", (str(job_id), provider)
        )

    def assign_votes(self, job_id: int) -> list[StoredAssignVote]:
        """Own precommits (AssignVotes) for the job, by round."""
        return self._votes("assign_votes", job_id)

    def assign_prevotes(self, job_id: int) -> list[StoredAssignVote]:
        return self._votes("assign_prevotes", job_id)

    def _votes(self, table: str, job_id: int) -> list[StoredAssignVote]:
        rows = self._db.execute(
            f"SELECT round, provider, signature FROM {table} WHERE job_id=? ORDER BY round",
            (str(job_id),),
        ).fetchall()
        return [StoredAssignVote(job_id, r, p, bytes(s)) for r, p, s in rows]

    def assign_lock(self, job_id: int) -> Lock:
        """The lock rebuilt from disk: latest precommit, rounds voted in, QC seen."""
        lock_votes = self.assign_votes(job_id)
        prevotes = self.assign_prevotes(job_id)
        qc = self._db.execute(
            "SELECT 1 FROM assign_qc_seen WHERE job_id=?", (str(job_id),)
        ).fetchone()
        latest = lock_votes[-1] if lock_votes else None
        return Lock(
            provider=latest.provider if latest else None,
            round=latest.round if latest else -1,
            precommitted=frozenset(v.round for v in lock_votes),
            prevoted=frozenset(v.round for v in prevotes),
            qc_seen=qc is not None,
        )

    # PoPW votes -------------------------------------------------------------

    def record_popw_vote(
        self, epoch: int, provider: str, verdict: int, gpu_class: bytes, signature: bytes
    ) -> None:
        """Commit the attestation; raise VoteConflict on a different (verdict, class)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT verdict, gpu_class FROM popw_votes WHERE epoch=? AND provider=?",
                (epoch, provider),
            ).fetchone()
            if row is not None:
                if (row[0], bytes(row[1])) != (verdict, gpu_class):
                    raise VoteConflict(f"epoch {epoch} provider {provider}: already attested")
                db.execute("COMMIT")
                return
            db.execute(
                "INSERT INTO popw_votes VALUES (?,?,?,?,?)",
                (epoch, provider, verdict, gpu_class, signature),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def popw_vote(self, epoch: int, provider: str) -> tuple[int, bytes, bytes] | None:
        """(verdict, gpu_class, signature) already signed for (epoch, provider), if any."""
        row = self._db.execute(
            "SELECT verdict, gpu_class, signature FROM popw_votes WHERE epoch=? AND provider=?",
            (epoch, provider),
        ).fetchone()
        return (row[0], bytes(row[1]), bytes(row[2])) if row else None
