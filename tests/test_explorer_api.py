"""Explorer HTTP API: filters, pagination, 400 with a reason, never a 500 (property test)."""

from __future__ import annotations

import warnings
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import wire
from node.chain.watcher import ChainEvent
from node.eip712 import Domain
from node.explorer.api import create_app
from node.explorer.indexer import Indexer, load_message_types
from node.explorer.store import Store
from node.identity import Identity

with warnings.catch_warnings():  # starlette 1.x: "use httpx2"; httpx is what we have
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

DOMAIN = Domain(1337)
load_message_types()
pytestmark = pytest.mark.skipif(
    "ProviderAd" not in wire.REGISTRY, reason="provider message types not in this checkout"
)


def _ad(who: Identity, gpu_class: str, gpus: int) -> wire.Envelope:
    fields = {
        "peer": "16Uiu2HAm" + who.address[2:30],
        "addrs": [],
        "gpu_class": gpu_class,
        "price_per_gpu_hour_wei": 10**15,
        "gpus_total": gpus,
        "gpus_free": gpus // 2,
        "accepting": gpus % 2 == 0,
        "inventory": {"gpus": []},
    }
    return wire.sign(who, DOMAIN, "ProviderAd", fields, network="devnet", seq=1)


@pytest.fixture(scope="module")
def world():
    store = Store(":memory:")
    ix = Indexer(store)
    providers = [Identity.generate() for _ in range(7)]
    for i, who in enumerate(providers):
        ix.index_envelope(_ad(who, ("cpu", "h100")[i % 2], i + 1), "ads/1")
    checker = Identity.generate()
    ix.index_envelope(
        wire.sign(
            checker,
            DOMAIN,
            "Heartbeat",
            {"role": "checker", "peer": "16Uiu2HAmC", "addrs": []},
            network="devnet",
            seq=1,
        ),
        "status/1",
    )
    for j in range(1, 4):
        ix.index_chain_event(
            ChainEvent(
                "JobCreated",
                {
                    "job_id": j,
                    "owner": providers[0].address,
                    "gpu_class": b"cpu",
                    "count": 1,
                    "image": "busybox",
                    "port": 80,
                    "duration": 10,
                },
                "0x" + "11" * 20,
                j,
                j.to_bytes(32, "big"),
                b"\x01" * 32,
                0,
            )
        )
    ix.index_chain_event(
        ChainEvent(
            "JobAssigned",
            {"job_id": 2, "provider": providers[1].address, "round": 0, "signers": 3},
            "0x" + "11" * 20,
            5,
            (5).to_bytes(32, "big"),
            b"\x02" * 32,
            0,
        )
    )
    store.commit()
    client = TestClient(create_app(store))
    return client, providers


def test_providers_pagination_and_filters(world):
    client, providers = world
    r = client.get("/api/providers?limit=3&offset=0&sort=gpus_total&order=asc")
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 7 and len(body["items"]) == 3
    assert [p["gpus_total"] for p in body["items"]] == [1, 2, 3]
    page3 = client.get("/api/providers?limit=3&offset=6&sort=gpus_total&order=asc").json()
    assert [p["gpus_total"] for p in page3["items"]] == [7]
    h100 = client.get("/api/providers?gpu_class=h100").json()
    assert h100["total"] == 3 and {p["gpu_class"] for p in h100["items"]} == {"h100"}
    accepting = client.get("/api/providers?accepting=true").json()
    assert all(p["accepting"] for p in accepting["items"]) and accepting["total"] == 3
    assert client.get("/api/providers?verified=true").json()["total"] == 0
    one = client.get(f"/api/providers/{providers[0].address.lower()}").json()
    assert one["address"] == providers[0].address and one["ads_seen"] == 1
    assert client.get("/api/providers/0x" + "00" * 20).status_code == 404


def test_jobs_checkers_stats(world):
    client, providers = world
    jobs = client.get("/api/jobs").json()
    assert [j["job_id"] for j in jobs["items"]] == ["3", "2", "1"]
    assigned = client.get("/api/jobs?state=assigned").json()["items"]
    assert [(j["job_id"], j["provider"]) for j in assigned] == [("2", providers[1].address)]
    assert client.get(f"/api/jobs?provider={providers[1].address}").json()["total"] == 1
    job = client.get("/api/jobs/2").json()
    assert [e["name"] for e in job["chain_events"]] == ["JobCreated", "JobAssigned"]
    assert client.get("/api/jobs/99").status_code == 404
    assert client.get("/api/checkers").json()["total"] == 1
    stats = client.get("/api/stats").json()
    assert stats["gpus_by_class"] == {"cpu": 1 + 3 + 5 + 7, "h100": 2 + 4 + 6}
    assert stats["active_jobs"] == 1 and stats["providers"] == 7
    spec = client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/api/providers/{id}" in spec["paths"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("/api/providers?limit=0", "limit: expected an integer 1..500"),
        ("/api/providers?limit=501", "limit"),
        ("/api/providers?offset=-1", "offset"),
        ("/api/providers?verified=yes", "verified: expected true or false"),
        ("/api/providers?sort=price;DROP", "sort: expected one of"),
        ("/api/providers?colour=red", "colour: unknown parameter"),
        ("/api/providers?limit=1&limit=2", "given more than once"),
        ("/api/providers/not-an-id", "id: expected"),
        ("/api/jobs?state=running", "state: expected one of"),
        ("/api/jobs?owner=0x12", "owner: expected a 0x-prefixed"),
        ("/api/jobs/abc", "id: expected a job id"),
        ("/api/jobs/" + "9" * 80, "id: expected a job id"),
        ("/api/stats?x=1", "x: unknown parameter"),
    ],
)
def test_bad_parameters_give_400_with_reason(world, url, reason):
    r = world[0].get(url)
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"]


KEYS = st.sampled_from(
    [
        "limit",
        "offset",
        "gpu_class",
        "verified",
        "accepting",
        "sort",
        "order",
        "state",
        "provider",
        "owner",
        "registered",
        "type",
        "signer",
        "x",
        "",
    ]
)
VALUES = st.one_of(
    st.text(max_size=40),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["true", "false", "asc", "desc", "open", "0x" + "ab" * 20, "gpus_total"]),
)
PATHS = st.sampled_from(
    ["/api/providers", "/api/checkers", "/api/jobs", "/api/stats", "/api/messages"]
) | st.builds(
    lambda p, s: p + quote(s, safe=""),
    st.sampled_from(["/api/providers/", "/api/jobs/"]),
    st.text(min_size=1, max_size=90),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=PATHS, params=st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_any_query_is_200_or_400_never_500(world, path, params):
    r = world[0].get(path, params=params)
    assert r.status_code in (200, 400, 404), (path, params, r.status_code, r.text)
    if r.status_code == 400:
        assert r.json()["error"]
