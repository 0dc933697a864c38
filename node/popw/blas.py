"""Run the checker's small products on one BLAS thread (a thin adapter over OpenBLAS).

Upstream behaviour worked around: OpenBLAS parallelises even a (n x n) @ (n x 16)
product over every core, and its worker threads then busy-wait; on the 2-core VMs the
checker's CPU time for one verification doubled (16 ms vs 8 ms at n = 2048). OpenBLAS
>= 0.3.21 exports ``openblas_set_num_threads_local``, which changes the thread count
for the calling thread only, so a prover computing in another thread of the same
process (devnet) keeps all cores. Without that symbol (another BLAS, macOS
Accelerate, ...) this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import logging
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


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS calls made by this thread inside the block use one thread."""
    setter = local_setter()
    if setter is None:
        yield
        return
    previous = setter(1)
    try:
        yield
    finally:
        setter(previous)
