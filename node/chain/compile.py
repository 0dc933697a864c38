"""Vyper sources -> (ABI, bytecode), compiled in-process and cached by source hash.

The cache lives outside the repository ($KAISAR_CACHE, else ~/.cache/kaisar) and is
keyed by sha256(compiler version || source), so editing a contract or upgrading vyper
recompiles and nothing stale is ever deployed. Writes are atomic (rename), so parallel
test workers and nodes can share one cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONTRACTS_DIR = Path(__file__).parent / "contracts"
CONTRACT_NAMES = ("License", "Staking", "Escrow", "Rewards")
# Cancun: transient storage for @nonreentrant and MCOPY, nothing newer, so the same
# bytecode runs on py-evm, anvil and any post-Dencun chain.
EVM_VERSION = "cancun"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list
    bytecode: str  # 0x-prefixed init code
    source_hash: str  # sha256 hex of the source text


def cache_dir() -> Path:
    env = os.environ.get("KAISAR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kaisar"


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def compile_contract(name: str) -> Artifact:
    """Compile ``contracts/<name>.vy`` (or read the cached result)."""
    return compile_source(name, (CONTRACTS_DIR / f"{name}.vy").read_text())


def compile_source(name: str, source: str) -> Artifact:
    """Compile Vyper ``source`` (cached by compiler version and source hash)."""
    import vyper

    shash = source_hash(source)
    from vyper.compiler.settings import Settings

    key = hashlib.sha256(f"{vyper.__version__}\0{EVM_VERSION}\0{source}".encode()).hexdigest()
    path = cache_dir() / "vyper" / f"{name}-{key[:32]}.json"
    try:
        blob = json.loads(path.read_text())
        return Artifact(name, blob["abi"], blob["bytecode"], shash)
    except (OSError, ValueError, KeyError):
        pass
    out = vyper.compile_code(
        source,
        contract_path=f"{name}.vy",
        output_formats=["abi", "bytecode"],
        settings=Settings(evm_version=EVM_VERSION),
    )
    art = Artifact(name, out["abi"], out["bytecode"], shash)
    _write_atomic(path, json.dumps({"abi": art.abi, "bytecode": art.bytecode}))
    return art


def compile_all() -> dict[str, Artifact]:
    return {name: compile_contract(name) for name in CONTRACT_NAMES}


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a recompile next time
