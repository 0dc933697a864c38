"""`kaisar bench explorer`: signed provider ads validated and indexed per second, one core.

Method: sign ``ads`` ProviderAd envelopes from ``providers`` keys beforehand (signing is
the providers' cost, not the explorer's), then time, in one thread, exactly what the
explorer does for each gossip message: ``wire.decode`` (size, schema, network,
signature, freshness, replay) and ``Indexer.index_envelope`` into a file-backed SQLite
index (WAL), committing every ``batch`` messages as the explorer's commit timer does.
If the real ``ProviderAd`` type is not registered (provider area absent), a bench type
with the same fields is used and the result says so.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from node import wire
from node.eip712 import Domain
from node.explorer.indexer import Indexer, load_message_types
from node.explorer.store import Store
from node.identity import Identity

NETWORK = "bench"
DOMAIN = Domain(1337)


def _ad_type() -> tuple[str, bool]:
    load_message_types()
    if "ProviderAd" in wire.REGISTRY:
        return "ProviderAd", True
    wire.register(
        wire.MessageType(
            "BenchProviderAd",
            (
                wire.Field("peer", "str", max_len=128),
                wire.Field("addrs", "list", max_len=16),
                wire.Field("gpu_class", "str", max_len=32),
                wire.Field("price_per_gpu_hour_wei", "uint", bits=256),
                wire.Field("gpus_total", "uint", bits=16),
                wire.Field("gpus_free", "uint", bits=16),
                wire.Field("accepting", "bool"),
                wire.Field("inventory", "map", max_len=8),
            ),
            max_size=12 * 1024,
            max_ttl_ms=3_600_000,
            ordered=True,
        )
    )
    return "BenchProviderAd", False


def make_ads(type_name: str, n: int, providers: int) -> list[bytes]:
    idents = [Identity.generate() for _ in range(providers)]
    now = wire.now_ms()
    out = []
    for i in range(n):
        who = idents[i % providers]
        fields = {
            "peer": f"16Uiu2HAm{who.address[2:40]}",
            "addrs": ["/ip4/127.0.0.1/tcp/4001"],
            "gpu_class": ("cpu", "a100", "h100")[i % 3],
            "price_per_gpu_hour_wei": 10**15 + i,
            "gpus_total": 8,
            "gpus_free": i % 9,
            "accepting": True,
            "inventory": {
                "gpus": [{"index": 0, "name": "bench", "uuid": "GPU-0", "memory_mb": 1024}]
            },
        }
        env = wire.sign(who, DOMAIN, type_name, fields, network=NETWORK, seq=i + 1, issued=now)
        out.append(env.to_bytes())
    return out


def bench_explorer(ads: int = 5000, providers: int = 100, batch: int = 500) -> dict:
    type_name, real = _ad_type()
    t_sign = time.perf_counter()
    data = make_ads(type_name, ads, providers)
    t_sign = time.perf_counter() - t_sign
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.sqlite")
        indexer = Indexer(store)
        replay = wire.ReplayGuard()
        allowed = frozenset({type_name})
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        t_decode = 0.0
        for i, raw in enumerate(data):
            td = time.perf_counter()
            env = wire.decode(
                raw, domain=DOMAIN, network=NETWORK, replay=replay, allowed_types=allowed
            )
            t_decode += time.perf_counter() - td
            indexer.index_envelope(env, "ads/1")
            if (i + 1) % batch == 0:
                store.commit()
        store.commit()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        indexed = store.count("messages")
        n_providers = store.count("providers")
        store.close()
    return {
        "bench": "explorer",
        "message_type": type_name,
        "real_provider_ad": real,
        "ads": ads,
        "providers": providers,
        "indexed": indexed,
        "provider_rows": n_providers,
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "ads_per_s": round(ads / elapsed, 1),
        "decode_us": round(t_decode / ads * 1e6, 1),
        "index_us": round((elapsed - t_decode) / ads * 1e6, 1),
        "commit_batch": batch,
        "sign_seconds_excluded": round(t_sign, 3),
        "target_per_s": 2000,
        "ok": ads / elapsed >= 2000 and indexed == ads,
    }
