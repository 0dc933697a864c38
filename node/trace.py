"""Per-job timeline marks for benchmarks (``kaisar bench deploy``'s step breakdown).

``mark(step, job_id)`` records ``time.monotonic()`` under a step name when a recorder is
installed and does nothing (one global read) otherwise. Marks may come from any thread
(the container runtime calls them from worker threads); a recorder appends, which is
atomic under the GIL. Only the first mark of a (step, job) pair counts: several
checkers reach the same step, and the bench wants the first one.

Nothing in the protocol reads marks: they are an observation aid, never a control path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

_recorder: Recorder | None = None


class Recorder:
    def __init__(self) -> None:
        self.marks: dict[tuple[str, int], float] = {}

    def add(self, step: str, job_id: int, t: float) -> None:
        self.marks.setdefault((step, job_id), t)

    def of(self, job_id: int) -> dict[str, float]:
        """Step -> monotonic time of one job's marks."""
        return {s: t for (s, j), t in self.marks.items() if j == job_id}


def mark(step: str, job_id: int) -> None:
    rec = _recorder
    if rec is not None:
        rec.add(step, int(job_id), time.monotonic())


@contextmanager
def recording() -> Iterator[Recorder]:
    """Install a recorder for the duration of the block (one at a time)."""
    global _recorder
    if _recorder is not None:
        raise RuntimeError("a trace recorder is already installed")
    _recorder = Recorder()
    try:
        yield _recorder
    finally:
        _recorder = None
