"""Typed node configuration from TOML, validated with errors that name the key.

A config file has sections; each section is a frozen dataclass below. Unknown
sections or keys, wrong types and out-of-range values raise ``ConfigError`` with the
dotted key (``p2p.gossip_degree: expected an integer >= 1``). Role sections
(``[provider]``, ``[checker]``) are dataclasses too; later issues add their fields.

Relative paths in a config file are relative to the file's directory.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import UserError

NETWORK_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


class ConfigError(UserError):
    """A config file problem; the message names the file and key."""


@dataclass(frozen=True)
class NodeSection:
    role: str = "provider"  # provider | checker
    key_file: str = ""  # keystore v3 JSON; password from KAISAR_PASSWORD
    data_dir: str = "var"
    network: str = "devnet"

    def check(self) -> None:
        _check(self.role in ("provider", "checker"), "role", "provider or checker")
        _check(
            0 < len(self.network) <= 32 and set(self.network) <= NETWORK_CHARS,
            "network",
            "1-32 chars of a-z 0-9 - _",
        )


@dataclass(frozen=True)
class P2PSection:
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    heartbeat_interval: float = 5.0  # seconds between signed status heartbeats
    gossip_degree: int = 6
    gossip_degree_low: int = 4
    gossip_degree_high: int = 12
    gossip_heartbeat: float = 1.0  # GossipSub mesh maintenance period, seconds
    max_message_size: int = 64 * 1024
    dht: bool = True
    # Inbound stream gate (node/p2p/limits.py), applied to every stream protocol
    stream_rate: float = 50.0  # new streams per second per (peer, protocol)
    stream_burst: int = 100  # streams a quiet peer may open at once per protocol
    max_streams_per_peer: int = 64  # open inbound streams per peer (all protocols)
    max_inbound_streams: int = 1024  # open inbound streams, all peers together

    def check(self) -> None:
        from multiaddr import Multiaddr

        _check(len(self.listen) >= 1, "listen", "at least one multiaddr")
        for i, addr in enumerate(self.listen + self.bootstrap):
            try:
                Multiaddr(addr)
            except Exception:
                key = "listen" if i < len(self.listen) else "bootstrap"
                raise ConfigError(f"p2p.{key}: {addr!r} is not a multiaddr") from None
        for addr in self.bootstrap:
            _check("/p2p/" in addr, "bootstrap", f"{addr!r} needs a /p2p/<peer id> part")
        _check(0.05 <= self.heartbeat_interval <= 3600, "heartbeat_interval", "0.05..3600 s")
        _check(
            1 <= self.gossip_degree_low <= self.gossip_degree <= self.gossip_degree_high <= 64,
            "gossip_degree",
            "1 <= gossip_degree_low <= gossip_degree <= gossip_degree_high <= 64",
        )
        _check(0.05 <= self.gossip_heartbeat <= 120, "gossip_heartbeat", "0.05..120 s")
        _check(1024 <= self.max_message_size <= 1 << 20, "max_message_size", "1 KiB..1 MiB")
        _check(0.01 <= self.stream_rate <= 100_000, "stream_rate", "0.01..100000 streams/s")
        _check(1 <= self.stream_burst <= 100_000, "stream_burst", "1..100000")
        _check(1 <= self.max_streams_per_peer <= 100_000, "max_streams_per_peer", "1..100000")
        _check(
            self.max_streams_per_peer <= self.max_inbound_streams <= 1_000_000,
            "max_inbound_streams",
            "max_streams_per_peer..1000000",
        )


@dataclass(frozen=True)
class ChainSection:
    rpc: str = "embedded"  # "embedded" (in-process eth-tester) or an http(s) JSON-RPC URL
    chain_id: int = 1337
    deployment: str = ""  # deployment JSON written by `kaisar chain deploy`
    confirmations: int = 0

    def check(self) -> None:
        _check(
            self.rpc == "embedded" or self.rpc.startswith(("http://", "https://")),
            "rpc",
            "'embedded' or an http(s):// URL",
        )
        _check(0 < self.chain_id < 1 << 63, "chain_id", "a positive integer")
        _check(0 <= self.confirmations <= 64, "confirmations", "0..64")


@dataclass(frozen=True)
class MetricsSection:
    port: int = 0  # 0: no metrics endpoint
    host: str = "127.0.0.1"

    def check(self) -> None:
        _check(0 <= self.port <= 65535, "port", "0..65535")


@dataclass(frozen=True)
class ProviderSection:
    gpu_class: str = "cpu"
    price_per_gpu_hour_wei: int = 10**15
    ad_interval: float = 10.0
    max_gpus: int = 1  # GPUs offered (CPU-only machine: this many CPU slots)
    status_interval: float = 5.0  # job monitor + running heartbeat period
    chain_poll_interval: float = 10.0  # re-read live jobs on chain (closed, reassigned)
    max_tunnels_per_job: int = 8
    memory_mb: int = 1024  # per job container
    cpus: float = 1.0
    pids: int = 512
    read_only_rootfs: bool = False  # job containers get a read-only root; /tmp is a tmpfs
    tmpfs_mb: int = 64  # size of that /tmp tmpfs
    log_retention: float = 600.0  # keep a stopped container this long for its logs
    docker_host: str = ""  # "" = $DOCKER_HOST or the default socket
    allow_pull: bool = True
    relay: str = "auto"  # circuit relay reservations: off | on | auto (when no public IP)
    relays: list[str] = field(default_factory=list)  # relay multiaddrs; [] = connected checkers
    relay_count: int = 2  # reservations to hold

    def check(self) -> None:
        _check(self.price_per_gpu_hour_wei >= 0, "price_per_gpu_hour_wei", ">= 0")
        # Ads carry the price as a msgpack integer (at most 64 bits)
        _check(self.price_per_gpu_hour_wei < 1 << 64, "price_per_gpu_hour_wei", "< 2**64")
        _check(0.1 <= self.ad_interval <= 3600, "ad_interval", "0.1..3600 s")
        _check(0 <= self.max_gpus <= 64, "max_gpus", "0..64")
        _check(0 < len(self.gpu_class.encode()) <= 32, "gpu_class", "1..32 bytes")
        _check(0.05 <= self.status_interval <= 600, "status_interval", "0.05..600 s")
        _check(0.1 <= self.chain_poll_interval <= 3600, "chain_poll_interval", "0.1..3600 s")
        _check(1 <= self.max_tunnels_per_job <= 1024, "max_tunnels_per_job", "1..1024")
        _check(8 <= self.memory_mb <= 1 << 22, "memory_mb", "8..4194304")
        _check(0 < self.cpus <= 1024, "cpus", "0 < cpus <= 1024")
        _check(1 <= self.pids <= 1 << 22, "pids", "1..4194304")
        _check(1 <= self.tmpfs_mb <= 1 << 20, "tmpfs_mb", "1..1048576")
        _check(0 <= self.log_retention <= 7 * 86400, "log_retention", "0..604800 s")
        _check(
            self.docker_host == "" or "://" in self.docker_host,
            "docker_host",
            "'' or a URL like unix:///path/docker.sock",
        )
        _check(self.relay in ("off", "on", "auto"), "relay", "off, on or auto")
        for addr in self.relays:
            _check(_is_multiaddr(addr) and "/p2p/" in addr, "relays", f"{addr!r}: a multiaddr with /p2p/<id>")
        _check(1 <= self.relay_count <= 8, "relay_count", "1..8")


@dataclass(frozen=True)
class CheckerSection:
    epoch_seconds: float = 60.0
    round_timeout: float = 5.0
    popw: bool = True  # challenge the providers of this checker's committees each epoch
    status_timeout: float = 30.0  # an assigned provider silent this long has failed
    submit_backoff: float = 2.0  # seconds between checkers taking turns to submit a QC
    chain_poll: float = 1.0  # seconds between chain event polls
    deploy_timeout: float = 60.0  # seconds a deploy command may take (image start included)
    popw_attempts: int = 6  # tries per epoch and provider while it answers busy
    # PoPW challenge sizing: 0 = configs/gpu_classes.toml ([popw] target_seconds /
    # network_allowance_seconds). A devnet on one machine sets smaller challenges and a
    # wider allowance; every checker of a network should use the same values.
    popw_target_seconds: float = 0.0
    popw_allowance_seconds: float = 0.0
    relay: bool = True  # offer circuit relay v2 hops to providers behind NAT
    relay_max_reservations: int = 64  # providers holding a reservation at once
    relay_max_circuits: int = 16  # open circuits per reserved provider
    relay_circuit_duration: int = 3600  # seconds one circuit may live; 0 = unlimited
    relay_circuit_bytes: int = 1 << 30  # bytes one circuit may carry; 0 = unlimited
    relay_reservation_ttl: int = 3600  # seconds; providers refresh at half of it

    def check(self) -> None:
        _check(1 <= self.epoch_seconds <= 86400, "epoch_seconds", "1..86400 s")
        _check(0.1 <= self.round_timeout <= 600, "round_timeout", "0.1..600 s")
        _check(isinstance(self.popw, bool), "popw", "true or false")
        _check(1 <= self.status_timeout <= 3600, "status_timeout", "1..3600 s")
        _check(0 <= self.submit_backoff <= 600, "submit_backoff", "0..600 s")
        _check(0.05 <= self.chain_poll <= 60, "chain_poll", "0.05..60 s")
        _check(1 <= self.deploy_timeout <= 3600, "deploy_timeout", "1..3600 s")
        _check(1 <= self.popw_attempts <= 1000, "popw_attempts", "1..1000")
        _check(
            self.popw_target_seconds == 0 or 0.01 <= self.popw_target_seconds <= 600,
            "popw_target_seconds",
            "0 (class table) or 0.01..600 s",
        )
        _check(
            self.popw_allowance_seconds == 0 or 0.01 <= self.popw_allowance_seconds <= 600,
            "popw_allowance_seconds",
            "0 (class table) or 0.01..600 s",
        )
        _check(1 <= self.relay_max_reservations <= 100_000, "relay_max_reservations", "1..100000")
        _check(1 <= self.relay_max_circuits <= 1024, "relay_max_circuits", "1..1024")
        _check(0 <= self.relay_circuit_duration <= 7 * 86400, "relay_circuit_duration", "0..604800 s")
        _check(0 <= self.relay_circuit_bytes < 1 << 63, "relay_circuit_bytes", "0..2**63-1")
        _check(10 <= self.relay_reservation_ttl <= 86400, "relay_reservation_ttl", "10..86400 s")


@dataclass(frozen=True)
class ExplorerSection:
    http_host: str = "127.0.0.1"
    http_port: int = 8080  # 0: any free port (the URL is logged)
    db: str = "var/explorer.sqlite"  # SQLite index (WAL); ":memory:" for a throwaway index
    chain_events: bool = True  # index contract events when [chain] has an RPC URL + deployment
    commit_interval: float = 0.25  # seconds between index commits (batching)

    def check(self) -> None:
        _check(0 < len(self.http_host) <= 255 and " " not in self.http_host, "http_host", "a host name or IP")
        _check(0 <= self.http_port <= 65535, "http_port", "0..65535")
        _check(len(self.db) > 0, "db", "a file path or ':memory:'")
        _check(0.01 <= self.commit_interval <= 60, "commit_interval", "0.01..60 s")


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    p2p: P2PSection = field(default_factory=P2PSection)
    chain: ChainSection = field(default_factory=ChainSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    provider: ProviderSection = field(default_factory=ProviderSection)
    checker: CheckerSection = field(default_factory=CheckerSection)
    explorer: ExplorerSection = field(default_factory=ExplorerSection)
    base_dir: Path = Path(".")

    def path(self, value: str) -> Path:
        """Resolve a path from the config relative to the config file's directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "base_dir"}


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return from_dict(data, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def from_dict(data: dict[str, Any], *, base_dir: Path = Path(".")) -> Config:
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table [{name}]")
        cls = _resolve(SECTIONS[name])
        sections[name] = _build_section(name, cls, value)
    cfg = Config(**sections, base_dir=base_dir)
    for name in SECTIONS:
        section = getattr(cfg, name)
        try:
            section.check()
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith(f"{name}.") else f"{name}.{msg}") from None
    return cfg


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(f"{name}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(key: str, typ: Any, value: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return _coerce(key, args[0], value)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string")
        return value
    raise AssertionError(f"unsupported config type {typ}")  # pragma: no cover


def _is_multiaddr(addr: str) -> bool:
    from multiaddr import Multiaddr

    try:
        Multiaddr(addr)
    except Exception:
        return False
    return True


def _resolve(typ: Any) -> type:
    return typ if isinstance(typ, type) else globals()[typ]


def _check(ok: bool, key: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}")
