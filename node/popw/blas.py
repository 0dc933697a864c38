"""Run the checker's small products on one BLAS thread (a thin adapter over OpenBLAS).

Upstream behaviour worked around: OpenBLAS parallelises even a (n x n) @ (n x 16)
product over every core, and its worker threads then busy-wait; on the 2-core VMs the
checker's CPU time for one verification doubled (16 ms vs 8 ms at n = 2048). OpenBLAS
>= 0.3.21 exports ``openblas_set_num_threads_local``, which changes the thread count
for the calling thread only, so a prover computing in another thread of the same
process (devnet) keeps all cores. Without that symbol (another BLAS, macOS
Accelerate, ...) this is a no-op.

Measured here (numpy 2's bundled scipy-openblas 0.3.2x): the "local" setter changes the
*process-wide* count (another thread's ``get_num_threads`` reads 1 after it). With two
threads inside the block at once (the prover's row bands), the second one's "previous"
count was the first one's 1, and restoring it left the whole process on one BLAS thread
for good: the PoPW bench's bare-matmul baseline then ran at half speed (n = 2048: 2.0 s
instead of 1.05 s) in some runs and not others. So the block counts its holders and the
last one out restores the count seen when the first one came in; a BLAS whose setter
really is per thread gets each thread's own previous count back as before.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy  # noqa: F401  (loads the BLAS library this module looks for)

log = logging.getLogger(__name__)

LOCAL_SETTER = "openblas_set_num_threads_local"


@functools.cache
def local_setter() -> Callable[[int], int] | None:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            fn = getattr(ctypes.CDLL(path), LOCAL_SETTER)
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    log.debug("blas_local_threads_unavailable")
    return None


_lock = threading.Lock()
_holders = 0  # threads inside single_threaded_blas
_outside = 0  # the thread count seen when the first of them came in


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS calls made by this thread inside the block use one thread."""
    global _holders, _outside
    setter = local_setter()
    if setter is None:
        yield
        return
    with _lock:
        previous = setter(1)
        if _holders == 0:
            _outside = previous
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            # the last one out restores the count from before the first one came in (a
            # process-wide setter); others their own previous count (a per-thread one)
            setter(_outside if _holders == 0 else previous)
