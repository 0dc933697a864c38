"""The GPU class table (``configs/gpu_classes.toml``): work sizes and deadlines per class.

Rules:
- ``rounds_for(cls)``: smallest multiple of ``stride`` with ``rounds * 2n^3 >=
  target_seconds * tflops``: an honest device of the class at rated speed takes
  ``target_seconds``.
- ``deadline_for(cls, rounds)``: ``work / (tflops * min_efficiency) + allowance``.
- ``qualifying_class(tflops)``: the fastest class whose deadline a device at the
  measured effective TFLOPS meets (speed and network allowance both count).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import UserError
from node.popw.challenge import (
    MAX_COMMITS,
    MAX_DEADLINE_SECONDS,
    MAX_N,
    MIN_N,
    Challenge,
    commit_stride,
    is_power_of_two,
    new_challenge,
    work_flops,
)

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "configs" / "gpu_classes.toml"


class ClassTableError(UserError):
    """configs/gpu_classes.toml is missing or invalid (the message names the field)."""


@dataclass(frozen=True)
class GpuClass:
    name: str
    tflops: float  # rated dense TFLOPS
    memory_gb: float
    n: int
    stride: int


@dataclass(frozen=True)
class PopwPolicy:
    target_seconds: float
    min_efficiency: float
    network_allowance_seconds: float
    openings: int


@dataclass(frozen=True)
class ClassTable:
    policy: PopwPolicy
    classes: dict[str, GpuClass]

    def get(self, name: str) -> GpuClass:
        if name not in self.classes:
            known = ", ".join(sorted(self.classes))
            raise ClassTableError(f"unknown GPU class {name!r} (known: {known})")
        return self.classes[name]


def _number(table: dict[str, Any], key: str, where: str, lo: float, hi: float) -> float:
    if key not in table:
        raise ClassTableError(f"{where}: missing '{key}'")
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ClassTableError(f"{where}.{key}: expected a number, got {v!r}")
    if not lo <= v <= hi:
        raise ClassTableError(f"{where}.{key} = {v} is outside [{lo}, {hi}]")
    return float(v)


def _int(table: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    v = table.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ClassTableError(f"{where}.{key}: expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ClassTableError(f"{where}.{key} = {v} is outside [{lo}, {hi}]")
    return v


def parse_table(data: dict[str, Any]) -> ClassTable:
    """Validate a parsed TOML document; every error names the offending field."""
    unknown = set(data) - {"popw", "classes"}
    if unknown:
        raise ClassTableError(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    p = data.get("popw")
    if not isinstance(p, dict):
        raise ClassTableError("missing [popw] table")
    policy = PopwPolicy(
        target_seconds=_number(p, "target_seconds", "popw", 0.01, 120.0),
        min_efficiency=_number(p, "min_efficiency", "popw", 0.05, 1.0),
        network_allowance_seconds=_number(p, "network_allowance_seconds", "popw", 0.0, 60.0),
        openings=_int(p, "openings", "popw", 1, 64),
    )
    raw = data.get("classes")
    if not isinstance(raw, dict) or not raw:
        raise ClassTableError("missing [classes.<name>] tables")
    classes = {}
    for name, c in raw.items():
        where = f"classes.{name}"
        if not isinstance(c, dict):
            raise ClassTableError(f"{where}: expected a table")
        extra = set(c) - {"tflops", "memory_gb", "n", "stride"}
        if extra:
            raise ClassTableError(f"{where}: unknown keys {', '.join(sorted(extra))}")
        n = _int(c, "n", where, MIN_N, MAX_N)
        if not is_power_of_two(n):
            raise ClassTableError(f"{where}.n = {n} must be a power of two")
        cls = GpuClass(
            name=name,
            tflops=_number(c, "tflops", where, 1e-4, 1e5),
            memory_gb=_number(c, "memory_gb", where, 0.0, 1e4),
            n=n,
            stride=_int(c, "stride", where, 1, 1024) if "stride" in c else commit_stride(n),
        )
        if rounds_for(cls, policy) // cls.stride > MAX_COMMITS:
            raise ClassTableError(f"{where}: too many commits; raise n or stride")
        if deadline_for(cls, policy, rounds_for(cls, policy)) > MAX_DEADLINE_SECONDS:
            raise ClassTableError(f"{where}: deadline above {MAX_DEADLINE_SECONDS}s")
        classes[name] = cls
    return ClassTable(policy, classes)


def load_table(path: Path | str | None = None) -> ClassTable:
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClassTableError(f"GPU class table {path} not found") from None
    except OSError as exc:
        raise ClassTableError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClassTableError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse_table(data)
    except ClassTableError as exc:
        raise ClassTableError(f"{path}: {exc}") from None


def rounds_for(cls: GpuClass, policy: PopwPolicy) -> int:
    """Chain length so an honest device of the class at rated speed takes target_seconds."""
    per_round = work_flops(cls.n, 1)
    rounds = math.ceil(policy.target_seconds * cls.tflops * 1e12 / per_round)
    return max(cls.stride, math.ceil(rounds / cls.stride) * cls.stride)


def deadline_for(cls: GpuClass, policy: PopwPolicy, rounds: int) -> float:
    """Seconds allowed from challenge sent to commit received."""
    compute = work_flops(cls.n, rounds) / (cls.tflops * 1e12 * policy.min_efficiency)
    return compute + policy.network_allowance_seconds


def challenge_for(cls: GpuClass, policy: PopwPolicy) -> Challenge:
    rounds = rounds_for(cls, policy)
    return new_challenge(cls.n, rounds, deadline_for(cls, policy, rounds), cls.stride)


def meets_deadline(cls: GpuClass, policy: PopwPolicy, effective_tflops: float) -> bool:
    """Would a device at this measured speed commit the class's challenge in time?"""
    rounds = rounds_for(cls, policy)
    seconds = work_flops(cls.n, rounds) / max(effective_tflops * 1e12, 1e-9)
    return seconds <= deadline_for(cls, policy, rounds)


def qualifying_class(table: ClassTable, effective_tflops: float) -> GpuClass | None:
    """The fastest class whose deadline a device at the measured speed meets."""
    ok = [c for c in table.classes.values() if meets_deadline(c, table.policy, effective_tflops)]
    return max(ok, key=lambda c: c.tflops, default=None)
