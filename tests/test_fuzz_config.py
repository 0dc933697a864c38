"""Fuzzing the config loader (node/config.py) past test_config_cli's section-level fuzz.

- TOML text: random and mutated files raise only ``ConfigError`` from ``config.load``.
- Every known key of every section gets values of every TOML type (and edge values:
  nan, inf, huge integers, dates, nested tables, hostile multiaddrs); the loader raises
  only ``ConfigError`` naming ``section.key``, and whatever loads builds the objects the
  node builds from it (host options and the stream gate, provider settings and
  container limits) without error. Counts: docs/FUZZING.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import typing

from fuzzing import fuzz
from hypothesis import event, given
from hypothesis import strategies as st

from node import config
from node.config import ConfigError
from node.roles.provider.runtime import validate_request
from node.roles.provider.service import ProviderSettings
from node.runner import host_options

KEYS = {
    name: [f.name for f in dataclasses.fields(config._resolve(typ))]
    for name, typ in config.SECTIONS.items()
}
VALID = (
    b"[node]\nrole = \"provider\"\nnetwork = \"devnet\"\n[p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n"
    b"stream_rate = 5.0\n[provider]\nread_only_rootfs = true\ntmpfs_mb = 16\nmemory_mb = 64\n"
)
MULTIADDRS = [
    "/ip4/127.0.0.1/tcp/0", "/ip4/1.2.3.4/tcp/1/p2p/16Uiu2HAmRZ2zqgdrM3ZYP4ddvoLrMCs3Ygt4GG4kmSa4ykAmEbmL",
    "/ip4/999.0.0.1/tcp/1", "/ip6/::1/tcp/70000", "/dns4/x/tcp/1/p2p/notbase58!", "/p2p/", "//",
    "/ip4/1.2.3.4/udp/1/quic-v1", "/unix/tmp/x", "ip4/1.2.3.4", "/ip4/1.2.3.4/tcp/1/p2p/" + "1" * 300,
]  # fmt: skip

toml_scalar = (
    st.integers(-(2**64), 2**64)
    | st.sampled_from([0, 1, -1, 2**63 - 1, 1 << 22, 1 << 64])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.text(max_size=40)
    | st.sampled_from(MULTIADDRS + ["embedded", "http://x", "unix:///x", "provider", "checker", ":memory:"])
    | st.dates()
    | st.datetimes()
)
toml_value = toml_scalar | st.lists(toml_scalar, max_size=4) | st.dictionaries(st.text(max_size=5), toml_scalar, max_size=2)


def toml_text(data: dict) -> str:
    """A tiny TOML writer for generated tables (no TOML writer is a dependency)."""
    out = []
    for section, table in data.items():
        out.append(f"[{_key(section)}]")
        for k, v in table.items():
            out.append(f"{_key(k)} = {_val(v)}")
    return "\n".join(out) + "\n"


def _key(k: str) -> str:
    return _val(k)


def _val(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return "{" + ", ".join(f"{_key(k)} = {_val(x)}" for k, x in v.items()) + "}"


HINTS = {
    name: typing.get_type_hints(config._resolve(typ)) for name, typ in config.SECTIONS.items()
}


def typed(hint) -> st.SearchStrategy:
    """Values of the key's own type, at and around the ranges the checks allow."""
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.sampled_from([0, 1, 8, 64, 512, 1024, 65535, 65536, 1 << 22, -1]) | st.integers(-10, 10**6)
    if hint is float:
        return st.sampled_from([0.0, 0.01, 0.05, 0.1, 1.0, 60.0, 3600.0, 86400.0, 1e9]) | st.floats(-1, 1e5)
    if hint is str:
        return st.sampled_from(["provider", "checker", "devnet", "embedded", "http://127.0.0.1:8545", "cpu", "", "x" * 40])
    return st.lists(st.sampled_from(MULTIADDRS), max_size=3)  # list[str]: multiaddrs


@st.composite
def configs(draw):
    data: dict = {}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(KEYS)))
        table = data.setdefault(section, {})
        for _ in range(draw(st.integers(1, 4))):
            key = draw(st.sampled_from(KEYS[section]))
            table[key] = draw(typed(HINTS[section][key]) if draw(st.integers(0, 3)) else toml_value)
    return data


def _build(cfg: config.Config) -> None:
    """What the node derives from a loaded config."""
    opts = host_options(cfg)
    assert opts.stream_limits.per_peer <= opts.stream_limits.total
    settings = ProviderSettings.from_config(cfg.provider)
    validate_request(1, "kaisar/busybox", 8080, (), settings.limits, {})


@fuzz(150)
@given(configs())
def test_every_key_with_any_value_loads_or_names_the_key(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(toml_text(data))
    try:
        cfg = config.load(path)
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith(str(path)) and "\n" not in msg
        assert any(f" {s}." in msg or f"[{s}]" in msg for s in KEYS), msg
        event("refused")
        return
    event("loaded")
    _build(cfg)


@fuzz(200)
@given(st.binary(max_size=400) | st.text(max_size=300).map(str.encode))
def test_any_bytes_as_config_file(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_bytes(raw)
    try:
        _build(config.load(path))
    except ConfigError:
        pass


@fuzz(200)
@given(st.data())
def test_mutated_valid_config_file(tmp_path_factory, data):
    buf = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i : i + data.draw(st.integers(1, 8))]
        else:
            buf[i:i] = data.draw(st.sampled_from([b"\xff", b"=", b"[", b"\n", b"\"", b"1e999", b"nan", b"0x"]))
        if not buf:
            buf = bytearray(b"x")
    path = data.draw(st.just(tmp_path_factory.mktemp("cfg") / "c.toml"))
    path.write_bytes(bytes(buf))
    try:
        _build(config.load(path))
    except ConfigError:
        pass


def test_binary_config_file_is_a_config_error(tmp_path):
    """Found by fuzzing: a non-UTF-8 file escaped as UnicodeDecodeError (a traceback)."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xff\xfe[node]\n")
    try:
        config.load(path)
    except ConfigError as exc:
        assert "not UTF-8" in str(exc)
    else:
        raise AssertionError("loaded")


def test_fuzzed_valid_config_reaches_the_new_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(VALID)
    cfg = config.load(path)
    assert host_options(cfg).stream_limits.rate == 5.0
    limits = ProviderSettings.from_config(cfg.provider).limits
    assert limits.read_only and limits.tmpfs_bytes == 16 * 1024 * 1024
