"""Explorer indexer: dedupe by digest / (block hash, log index), restart safety, ad order."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node import wire
from node.chain.watcher import ChainEvent
from node.eip712 import Domain
from node.explorer.indexer import Indexer, load_message_types
from node.explorer.store import Store
from node.identity import Identity

DOMAIN = Domain(1337)
NET = "devnet"
load_message_types()
# ProviderAd / JobStatus come from the provider area (node/roles/provider/messages.py)
needs_provider_types = pytest.mark.skipif(
    not {"ProviderAd", "JobStatus"} <= set(wire.REGISTRY),
    reason="provider message types not in this checkout",
)
pytestmark = needs_provider_types


def ad(who: Identity, seq: int, gpus: int = 4, gpu_class: str = "cpu") -> wire.Envelope:
    return wire.sign(
        who,
        DOMAIN,
        "ProviderAd",
        {
            "peer": "16Uiu2HAmTest",
            "addrs": ["/ip4/127.0.0.1/tcp/1"],
            "gpu_class": gpu_class,
            "price_per_gpu_hour_wei": 10**15,
            "gpus_total": gpus,
            "gpus_free": gpus,
            "accepting": True,
            "inventory": {"gpus": []},
        },
        network=NET,
        seq=seq,
    )


def heartbeat(who: Identity, role: str, seq: int = 1) -> wire.Envelope:
    return wire.sign(
        who,
        DOMAIN,
        "Heartbeat",
        {"role": role, "peer": "16Uiu2HAmX", "addrs": []},
        network=NET,
        seq=seq,
    )


def event(name: str, args: dict, block: int, log_index: int = 0, block_hash: bytes | None = None):
    return ChainEvent(
        name=name,
        args=args,
        address="0x" + "11" * 20,
        block_number=block,
        block_hash=block_hash or block.to_bytes(32, "big"),
        tx_hash=b"\x22" * 32,
        log_index=log_index,
    )


def job_created(job_id: int, block: int, **kw) -> ChainEvent:
    args = {
        "job_id": job_id,
        "owner": "0x" + "ab" * 20,
        "spec_hash": b"\x00" * 32,
        "gpu_class": b"cpu".ljust(32, b"\x00"),
        "count": 1,
        "image": "busybox:latest",
        "port": 8080,
        "duration": 100,
    }
    return event("JobCreated", args, block, **kw)


def test_same_message_twice_is_indexed_once(tmp_path):
    store = Store(tmp_path / "x.sqlite")
    ix = Indexer(store)
    who = Identity.generate()
    env = ad(who, 5)
    assert ix.index_envelope(env, "ads/1") is True
    assert ix.index_envelope(env, "ads/1") is False
    assert store.count("messages") == 1
    assert store.count("providers") == 1


def test_restart_resumes_without_duplicates(tmp_path):
    path = tmp_path / "x.sqlite"
    who, checker = Identity.generate(), Identity.generate()
    envs = [ad(who, 1), heartbeat(who, "provider"), heartbeat(checker, "checker")]
    events = [
        job_created(1, 10),
        event("JobAssigned", {"job_id": 1, "provider": who.address, "round": 0, "signers": 3}, 11),
    ]
    store = Store(path)
    ix = Indexer(store)
    for e in envs:
        ix.index_envelope(e, "ads/1" if e.type == "ProviderAd" else "status/1")
    for ev in events:
        ix.index_chain_event(ev)
    store.close()  # "crash" after the commit

    store = Store(path)  # restart: gossip and the chain deliver everything again
    ix = Indexer(store)
    assert not any(ix.index_envelope(e, "status/1") for e in envs)
    assert not any(ix.index_chain_event(ev) for ev in events)
    store.commit()
    assert store.count("messages") == 3
    assert store.count("chain_events") == 2
    assert store.count("providers") == 1 and store.count("checkers") == 1
    [job] = store.query("SELECT * FROM jobs")
    assert (job["state"], job["provider"], job["image"]) == (
        "assigned",
        who.address,
        "busybox:latest",
    )
    assert store.get_meta("chain_block") == "11"
    store.close()


def test_uncommitted_batch_is_not_half_written(tmp_path):
    path = tmp_path / "x.sqlite"
    store = Store(path)
    Indexer(store).index_envelope(ad(Identity.generate(), 1), "ads/1")
    store.db.close()  # killed before the commit timer fired
    store = Store(path)
    assert store.count("messages") == 0 and store.count("providers") == 0


def test_reorged_event_is_recorded_but_does_not_double_count():
    store = Store(":memory:")
    ix = Indexer(store)
    assert ix.index_chain_event(job_created(7, 10))
    moved = job_created(7, 11, block_hash=b"\x99" * 32)  # same log, new block after a reorg
    assert ix.index_chain_event(moved)
    assert store.count("chain_events") == 2
    assert store.count("jobs") == 1


def test_older_ad_does_not_replace_newer():
    store = Store(":memory:")
    ix = Indexer(store)
    who = Identity.generate()
    ix.index_envelope(ad(who, 10, gpus=8, gpu_class="h100"), "ads/1")
    ix.index_envelope(ad(who, 9, gpus=1, gpu_class="cpu"), "ads/1")  # late delivery
    [p] = store.query("SELECT * FROM providers")
    assert (p["gpus_total"], p["gpu_class"], p["ad_seq"]) == (8, "h100", 10)
    # a heartbeat afterwards keeps the ad
    ix.index_envelope(heartbeat(who, "provider"), "status/1")
    [p] = store.query("SELECT * FROM providers")
    assert p["gpus_total"] == 8


def test_unknown_type_is_stored_generically():
    name = "ExplorerTestAttest"
    if name not in wire.REGISTRY:
        wire.register(
            wire.MessageType(
                name,
                (
                    wire.Field("provider", "address"),
                    wire.Field("verdict", "uint", bits=8),
                    wire.Field("tflops_milli", "uint"),
                ),
            )
        )
    store = Store(":memory:")
    ix = Indexer(store)
    provider, checker = Identity.generate(), Identity.generate()
    env = wire.sign(
        checker,
        DOMAIN,
        name,
        {"provider": bytes.fromhex(provider.address[2:]), "verdict": 1, "tflops_milli": 12500},
        network=NET,
        seq=1,
    )
    assert ix.index_envelope(env, "attest/1")
    [m] = store.query("SELECT * FROM messages")
    assert m["type"] == name and m["signer"] == checker.address
    [p] = store.query("SELECT * FROM providers")
    assert (p["address"], p["popw_verdict"], p["popw_tflops"]) == (provider.address, "pass", 12.5)
    # an older attestation does not replace the standing
    old = wire.sign(
        checker,
        DOMAIN,
        name,
        {"provider": bytes.fromhex(provider.address[2:]), "verdict": 2, "tflops_milli": 1},
        network=NET,
        seq=2,
        issued=env.body["issued"] - 5000,
    )
    ix.index_envelope(old, "attest/1")
    [p] = store.query("SELECT * FROM providers")
    assert p["popw_verdict"] == "pass"


def test_job_status_events_and_latest_status():
    load_message_types()
    store = Store(":memory:")
    ix = Indexer(store)
    prov = Identity.generate()

    def status(state: str, seq: int, issued: int):
        return wire.sign(
            prov,
            DOMAIN,
            "JobStatus",
            {
                "job_id": 3,
                "round": 0,
                "state": state,
                "reason": "",
                "qc_digest": b"\x00" * 32,
                "peer": "16Uiu2HAmX",
                "container_port": 8080,
                "image": "busybox",
                "started": 1,
                "expires": 2,
            },
            network=NET,
            seq=seq,
            issued=issued,
        )

    now = wire.now_ms()
    ix.index_envelope(status("running", 2, now), "status/1")
    ix.index_envelope(status("deployed", 1, now - 1000), "status/1")  # arrives late
    [job] = store.query("SELECT * FROM jobs")
    assert job["status"] == "running" and job["provider"] == prov.address
    assert store.count("status_events") == 2
    # replace() keeps the envelope identical: the same digest is not stored twice
    ix.index_envelope(replace(status("running", 2, now)), "status/1")
    assert store.count("status_events") == 2
