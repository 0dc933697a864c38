"""Proof of physical work (docs/POPW.md).

- ``challenge``: constants, the Challenge and its validity rule, the centred reduction.
- ``prg``: the portable seed -> matrix expansion.
- ``merkle``: row commitments and proofs.
- ``backends``: numpy, torch/cupy on CUDA; ``prover``: compute, commit, open.
- ``verifier``: draw openings, the verification rules, the verdict.
- ``classes``: the GPU class table, work sizes and deadlines.
- ``protocol``: ``/kaisar/popw/1`` (``respond_popw``, ``run_challenge``).
- ``inventory``: NVML GPU inventory; ``commands``/``bench``: the CLI.
- ``testing``: dishonest provers for tests and fault injection.
"""
