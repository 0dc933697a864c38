"""The portable PRG that expands a challenge seed into the matrices A and B.

Specification (any language can reimplement it bit for bit):

1. ``h = sha256(PRG_DOMAIN || seed || label)`` with ``label`` = ``b"A"`` or ``b"B"``.
2. A PCG64 (XSL-RR 128/64) generator starts at ``state = int_le(h[0:16])`` and
   ``inc = int_le(h[16:32]) | 1``. Its raw 64-bit outputs are serialised little-endian:
   that is the byte stream ``s``.
3. Byte ``b`` of ``s`` becomes the entry ``((5 * b) >> 8) - 2`` in ``[-2, 2]``
   (near-uniform: 52/51/51/51/51 out of 256). Entries fill the matrix row-major.

Row ``j`` of a matrix starts at byte ``j * n`` = raw output ``j * n / 8``, so a verifier
regenerates one row of A by ``advance``-ing the generator, without the whole matrix.
numpy's ``PCG64.random_raw`` is this exact generator (the state is set directly, no
``SeedSequence``), and ``tests/test_popw_prg.py`` pins it against a pure-Python PCG64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from numpy.random import PCG64

PRG_DOMAIN = b"kaisar/popw/prg/v1"
ENTRY_MIN = -2
ENTRY_MAX = 2
BYTES_PER_OUTPUT = 8


def derive_pcg_state(seed: bytes, label: bytes) -> tuple[int, int]:
    """(state, inc) of the PCG64 stream for matrix ``label`` of a challenge ``seed``."""
    h = hashlib.sha256(PRG_DOMAIN + seed + label).digest()
    return int.from_bytes(h[:16], "little"), int.from_bytes(h[16:], "little") | 1


def _generator(seed: bytes, label: bytes) -> PCG64:
    state, inc = derive_pcg_state(seed, label)
    bg = PCG64(0)
    bg.state = {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": inc},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return bg


def bytes_to_entries(
    raw: np.ndarray, dtype: np.dtype | type = np.float32, out: np.ndarray | None = None
) -> np.ndarray:
    """Map uint8 bytes to entries in [-2, 2] (``((5*b) >> 8) - 2``), as ``dtype``."""
    x = np.multiply(raw, 5, dtype=np.int16)  # signed: x - 2 must not wrap
    np.right_shift(x, 8, out=x)
    if out is None:
        out = np.empty(raw.shape, dtype=dtype)
    np.subtract(x, 2, out=out, casting="unsafe")
    return out


def _raw_bytes(bg: PCG64, count: int) -> np.ndarray:
    assert count % BYTES_PER_OUTPUT == 0
    words = bg.random_raw(count // BYTES_PER_OUTPUT).astype("<u8", copy=False)
    return words.view(np.uint8)


def matrix(seed: bytes, label: bytes, n: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The n x n matrix ``label`` (b"A" or b"B") of the challenge with ``seed``."""
    raw = _raw_bytes(_generator(seed, label), n * n)
    return bytes_to_entries(raw, dtype).reshape(n, n)


def matrix_rows(
    seed: bytes, label: bytes, n: int, rows: list[int], dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """Only the given rows of matrix ``label`` (O(n) each via PCG64 ``advance``)."""
    out = np.empty((len(rows), n), dtype=dtype)
    words_per_row = n // BYTES_PER_OUTPUT
    for i, j in enumerate(rows):
        bg = _generator(seed, label)
        bg.advance(j * words_per_row)
        out[i] = bytes_to_entries(_raw_bytes(bg, n), dtype)
    return out


def matrix_blocks(
    seed: bytes, label: bytes, n: int, rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Matrix ``label`` as consecutive blocks of ``rows`` rows: ``(first_row, block)``,
    fp32, the same values as ``matrix``. The block buffer is reused: use each block
    before asking for the next. A checker that needs B once streams it through the
    cache this way instead of writing (and page-faulting) all n^2 entries."""
    assert rows > 0 and n % rows == 0
    bg = _generator(seed, label)
    block = np.empty((rows, n), dtype=np.float32)
    for r0 in range(0, n, rows):
        bytes_to_entries(_raw_bytes(bg, rows * n).reshape(rows, n), out=block)
        yield r0, block
