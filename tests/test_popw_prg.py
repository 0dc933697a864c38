"""The PRG and the chain are portable and exact: pinned against a pure-Python PCG64 and an
int64 reference computation."""

import hashlib

import numpy as np
import pytest

from node.popw import blas, merkle, prg
from node.popw.backends import NumpyBackend
from node.popw.challenge import (
    MODULUS,
    Challenge,
    PopwError,
    advance,
    new_challenge,
    validate_challenge,
)
from node.popw.prover import Prover
from node.popw.verifier import verify_local

MASK128 = (1 << 128) - 1
MASK64 = (1 << 64) - 1
PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645


def pcg64_reference(state: int, inc: int, count: int) -> list[int]:
    """PCG64 XSL-RR 128/64 (O'Neill), as any language would implement it."""
    out = []
    for _ in range(count):
        state = (state * PCG_MULT + inc) & MASK128
        v = (state >> 64) ^ (state & MASK64)
        rot = state >> 122
        out.append(((v >> rot) | (v << ((64 - rot) & 63))) & MASK64)
    return out


def reference_entries(seed: bytes, label: bytes, n: int) -> np.ndarray:
    state, inc = prg.derive_pcg_state(seed, label)
    words = pcg64_reference(state, inc, n * n // 8)
    raw = b"".join(w.to_bytes(8, "little") for w in words)
    return np.array([((5 * b) >> 8) - 2 for b in raw], dtype=np.int64).reshape(n, n)


def test_numpy_prg_equals_pure_python_pcg64():
    seed = bytes(range(32))
    for label in (b"A", b"B"):
        ours = prg.matrix(seed, label, 16).astype(np.int64)
        assert np.array_equal(ours, reference_entries(seed, label, 16))


def test_matrix_bytes_are_pinned():
    # Changing the PRG changes every challenge: this digest must never move silently.
    m = prg.matrix(bytes(range(32)), b"B", 64).astype(np.int8)
    assert (
        hashlib.sha256(m.tobytes()).hexdigest()
        == "883ca80878a20e3ed218232e98d077c7129871de42eb0327fc3822c4e8d40ade"
    )


def test_entries_in_range_and_near_uniform():
    m = prg.matrix(b"\x07" * 32, b"A", 256)
    values, counts = np.unique(m, return_counts=True)
    assert list(values) == [-2, -1, 0, 1, 2]
    assert counts.min() > 0.18 * m.size and counts.max() < 0.22 * m.size


def test_matrix_rows_equal_full_matrix_rows():
    seed = b"\x09" * 32
    full = prg.matrix(seed, b"A", 64)
    rows = [0, 1, 17, 63]
    assert np.array_equal(prg.matrix_rows(seed, b"A", 64, rows), full[rows])


def test_labels_and_seeds_give_different_matrices():
    a = prg.matrix(b"\x01" * 32, b"A", 32)
    assert not np.array_equal(a, prg.matrix(b"\x01" * 32, b"B", 32))
    assert not np.array_equal(a, prg.matrix(b"\x02" * 32, b"A", 32))


def int64_chain(seed: bytes, n: int, rounds: int) -> list[np.ndarray]:
    """The chain in exact integer arithmetic with a centred mod (no floats anywhere)."""
    c = prg.matrix(seed, b"A", n).astype(np.int64)
    b = prg.matrix(seed, b"B", n).astype(np.int64)
    out = []
    for _ in range(rounds):
        c = (c * c) @ b
        c = (c + MODULUS // 2) % MODULUS - MODULUS // 2
        out.append(c.astype(np.int8))
    return out


@pytest.mark.parametrize("n", [16, 128])
def test_float_chain_is_exact(n):
    ch = new_challenge(n, 4, 10.0)
    got = []
    out = merkle.leaf_storage(4, n)
    NumpyBackend().run_chain(ch.seed, n, 4, 1, out, lambda *band: got.append(band))
    # every row of every step reported exactly once (one band per thread at n = 128)
    assert sorted((i, r) for i, r0, r1 in got for r in range(r0, r1)) == [
        (i, r) for i in range(1, 5) for r in range(n)
    ]
    for i, ref in enumerate(int64_chain(ch.seed, n, 4)):
        assert np.array_equal(out[i, :, 1:], ref)


def test_stride_commits_every_stride_steps():
    ch = new_challenge(32, 6, 10.0, stride=3)
    got = []
    out = merkle.leaf_storage(2, 32)
    NumpyBackend().run_chain(ch.seed, 32, 6, 3, out, lambda *band: got.append(band))
    ref = int64_chain(ch.seed, 32, 6)
    assert got == [(1, 0, 32), (2, 0, 32)]
    assert np.array_equal(out[0, :, 1:], ref[2]) and np.array_equal(out[1, :, 1:], ref[5])


@pytest.mark.parametrize("n,rounds,stride", [(64, 3, 1), (256, 4, 2)])
def test_torch_cpu_gives_the_same_roots_as_numpy(n, rounds, stride):
    torch = pytest.importorskip("torch")
    from node.popw.backends import TorchBackend

    ch = new_challenge(n, rounds, 10.0, stride=stride)
    a = Prover(NumpyBackend()).commit(ch)
    prover = Prover(TorchBackend(torch, "cpu"))
    b = prover.commit(ch)
    assert a.roots == b.roots
    assert verify_local(ch, b, 0.1, prover.open, 16).passed


def reference_roots(ch):
    """Roots by the plainest path: one thread, whole matrices, leaves hashed row by row."""
    b = prg.matrix(ch.seed, b"B", ch.n)
    c = prg.matrix(ch.seed, b"A", ch.n)
    roots = []
    for step in range(1, ch.rounds + 1):
        c = advance(c, b)
        if step % ch.stride == 0:
            rows = c.astype(np.int8)
            leaves = [merkle.hash_leaf(rows[j].tobytes()) for j in range(ch.n)]
            roots.append(merkle.root_of(merkle.build_levels(leaves)))
    return roots


@pytest.mark.parametrize(
    "n,threads,pipeline",
    [(64, 1, False), (64, 2, True), (128, 4, False), (256, 4, False), (1024, 2, False),
     (2048, 2, False)],
)  # fmt: skip
def test_every_prover_path_commits_the_same_roots(n, threads, pipeline):
    # one band; row bands on 2 or 4 threads (bands of 32 and 64 rows: subtrees that end
    # below the top group), hashing in a worker thread (the GPU backends' pipeline),
    # storage reused by a second challenge
    backend = NumpyBackend(threads=threads)
    if threads > 1 and blas.local_setter() is not None:
        assert backend.bands(n) == min(threads, n // 32)
    prover = Prover(backend, pipeline=pipeline)
    for rounds in (2, 2) if n < 2048 else (1,):
        ch = new_challenge(n, rounds, 60.0)
        assert prover.commit(ch).roots == reference_roots(ch)


@pytest.mark.parametrize(
    "field,value",
    [("id", b"x" * 31), ("seed", b""), ("n", 48), ("n", 8), ("n", 1 << 15), ("rounds", 0),
     ("stride", 4), ("deadline", 0.0), ("deadline", 1e6)],
)  # fmt: skip
def test_invalid_challenges_are_refused(field, value):
    ch = Challenge(b"i" * 32, b"s" * 32, 64, 6, 3, 5.0)
    validate_challenge(ch)
    with pytest.raises(PopwError):
        validate_challenge(Challenge(**{**ch.__dict__, field: value}))


@pytest.mark.parametrize("n,bands", [(16, 2), (64, 2), (256, 4), (2048, 2), (2048, 8)])
def test_tree_joined_from_bands_equals_the_whole_tree(n, bands):
    leaves = merkle.leaf_hashes(prg.matrix(b"\x07" * 32, b"A", n).astype(np.int8))
    h = n // bands
    parts = [merkle.band_levels(leaves[r0 : r0 + h], r0, n) for r0 in range(0, n, h)]
    assert merkle.join_bands(parts, n) == merkle.build_levels(leaves)
    assert merkle.join_bands([merkle.band_levels(leaves, 0, n)], n) == merkle.build_levels(leaves)


@pytest.mark.parametrize("n", [16, 32, 256, 2048])
def test_merkle_proofs_bind_row_and_index(n):
    rows = prg.matrix(b"\x03" * 32, b"A", n).astype(np.int8)
    levels = merkle.build_levels(merkle.leaf_hashes(rows))
    root = merkle.root_of(levels)
    size = merkle.proof_length(n)
    assert size == {16: 15, 32: 16, 256: 30, 2048: 37}[n]
    for j in sorted({0, 1, 15, n // 2 + 3, n - 1}):
        row = rows[j].tobytes()
        proof = merkle.proof_of(levels, j)
        assert len(proof) == size and merkle.is_valid_proof(row, j, proof, n, root)
        assert not merkle.is_valid_proof(row, j ^ 1, proof, n, root)  # index is bound
        assert not merkle.is_valid_proof(row, j, proof[:-1], n, root)  # exact length
        assert not merkle.is_valid_proof(row, j, [*proof, proof[0]], n, root)
        assert not merkle.is_valid_proof(row, j + n, proof, n, root)  # same digits, out of range
        assert not merkle.is_valid_proof(row, j, proof[1:] + proof[:1], n, root)  # order
        bad = bytearray(row)
        bad[0] = (bad[0] + 1) % 256
        assert not merkle.is_valid_proof(bytes(bad), j, proof, n, root)
    # an inner node is not a leaf (domain separation)
    group = levels[0][:16]
    assert levels[1][0] != merkle.hash_leaf(b"".join(group))


def test_merkle_root_of_a_two_level_tree_by_hand():
    leaves = [bytes([i]) * 32 for i in range(32)]
    parents = [merkle.hash_node(leaves[:16]), merkle.hash_node(leaves[16:])]
    assert merkle.root_of(merkle.build_levels(leaves)) == merkle.hash_node(parents)


def test_single_threaded_blas_gives_the_same_products():
    from node.popw.blas import local_setter, single_threaded_blas

    b = prg.matrix(b"\x05" * 32, b"B", 256)
    x = prg.matrix(b"\x06" * 32, b"A", 256)[:16]
    outside = x @ b
    with single_threaded_blas():
        inside = x @ b
    assert np.array_equal(inside, outside)
    setter = local_setter()
    if setter is not None:  # numpy's bundled OpenBLAS: the thread-local setter restores
        with single_threaded_blas():
            assert setter(1) == 1


def test_overlapping_single_threaded_blocks_restore_the_process_count():
    """Two threads inside the block at once (the prover's row bands), leaving in the order
    they came in: the BLAS thread count afterwards is the one from before. numpy's bundled
    OpenBLAS setter is process-wide, so restoring each thread's own "previous" left the
    process on one BLAS thread (the second thread's previous was the first one's 1)."""
    import threading

    from node.popw.blas import local_setter, single_threaded_blas

    setter = local_setter()
    if setter is None:
        pytest.skip("this BLAS has no openblas_set_num_threads_local")
    before = setter(3)  # a count no block uses, to see exactly what is restored
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

        def a() -> None:
            with single_threaded_blas():
                a_in.set()
                b_in.wait(5)
            a_out.set()

        def b() -> None:
            a_in.wait(5)
            with single_threaded_blas():
                b_in.set()
                a_out.wait(5)

        threads = [threading.Thread(target=f) for f in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert a_out.is_set() and b_in.is_set()
        assert setter(3) == 3  # back to the count from before, not stuck at 1
    finally:
        setter(before)


@pytest.mark.parametrize("n", [16, 128, 256])
def test_streamed_b_product_equals_the_whole_matrix_product(n):
    # the checker streams B through the cache in blocks (verifier.streamed_product)
    from node.popw.verifier import recompute_rows, streamed_product

    seed = b"\x05" * 32
    blocks = list(prg.matrix_blocks(seed, b"B", n, 8))
    assert [r0 for r0, _ in blocks] == list(range(0, n, 8))
    prev = prg.matrix(b"\x06" * 32, b"A", n)[:5]
    want = recompute_rows(prev, prg.matrix(seed, b"B", n), 1)
    assert np.array_equal(streamed_product(seed, n, prev), want)


def test_prover_refuses_a_step_whose_bands_do_not_cover_every_row():
    # a backend that never reports the second band of step 2: no root may be made from
    # half a step (the tree would be joined from the rows that happen to be hashed)
    class DropsABand(NumpyBackend):
        def run_chain(self, seed, n, rounds, stride, out, on_rows):
            def report(c, r0, r1):
                if (c, r0) != (2, n // 2):
                    on_rows(c, r0, r1)

            super().run_chain(seed, n, rounds, stride, out, report)

    backend = DropsABand(threads=2)
    if backend.bands(64) < 2:
        pytest.skip("one band only: no thread-local BLAS setter")
    with pytest.raises(PopwError, match="wrong number of steps"):
        Prover(backend).commit(new_challenge(64, 3, 60.0))
