"""Fuzzing every stream protocol handler through its real entry point.

The provider registers ``/kaisar/popw/1``, ``/kaisar/deploy/1``, ``/kaisar/tunnel/1``,
``/kaisar/logs/1`` and ``/kaisar/status/1`` (``ProviderService.run``), the light client
``/kaisar/notify/1`` (``Client.start``: a provider's pushed status); ``grep set_handler
node`` lists them all. Each example runs the
service's handler on one end of an in-memory stream pair while a hostile peer writes
frames (valid-looking, near-valid, garbage) or raw bytes on the other end.

Property: the handler returns, or raises ``FrameError`` (the host logs it as a broken
stream); never any other exception (which the host would log as a handler bug), and
every reply is a well-formed frame. Valid owner tokens are mixed in so the fuzz also
reaches the authorized paths (a tunnel to a live TCP echo server). Counts: docs/FUZZING.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio
from fuzzing import fuzz
from hypothesis import event, given
from hypothesis import strategies as st

from node import wire
from node.devnet import DEVNET_DOMAIN
from node.identity import Identity
from node.p2p.frames import LEN, FrameError, memory_pair, pack
from node.p2p.host import HostOptions, KaisarHost
from node.popw.inventory import Inventory
from node.popw.prover import Prover
from node.roles.provider import messages as msg
from node.roles.provider.service import (
    CLOSED_PROTOCOL,
    DEPLOY_PROTOCOL,
    LOGS_PROTOCOL,
    POPW_PROTOCOL,
    STATUS_PROTOCOL,
    TUNNEL_PROTOCOL,
    ProviderService,
    ProviderSettings,
)
from node.roles.provider.state import JobRecord

OWNER = Identity.generate()
STRANGER = Identity.generate()
RUNNING_JOB = 7
STOPPED_JOB = 8

leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.binary(max_size=80)
    | st.text(max_size=20)
)
anything = st.recursive(
    leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=6),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    host = KaisarHost(Identity.generate(), network="devnet", domain=DEVNET_DOMAIN, options=HostOptions(dht=False))
    svc = ProviderService(
        host,
        ProviderSettings(max_tunnels_per_job=4),
        Path(tmp_path_factory.mktemp("fuzz")) / "p.sqlite",
        inventory=Inventory(cpu="fuzz", cpu_count=1),
        prover=Prover(),
    )
    svc.slots = ["cpu0", "cpu1"]  # one held by the running job, one free: PoPW is answered
    now = time.time()
    for job, state in ((RUNNING_JOB, msg.RUNNING), (STOPPED_JOB, msg.STOPPED)):
        svc.state.put_job(
            JobRecord(
                job_id=job, round=0, qc_digest=b"\x01" * 32, qc_sigs=(b"\x02" * 65,),
                owner=OWNER.address, image="kaisar/demo-echo", port=8080, gpus=("cpu0",),
                state=state, reason="", container_id="c", host_port=None,
                started=now, expires=now + 3600,
            )
        )
    yield svc
    svc.state.close()


def mostly(good, bad, k: int = 4):
    """``good`` k times in k+1 (``a | b`` would flatten b's branches and drown a)."""
    return st.integers(0, k).flatmap(lambda i: good if i else bad)


MUTATIONS = ["none", "none", "none", "stranger", "job", "action", "expired", "far", "provider",
             "drop", "type", "extra", "nonce", "sig"]


@st.composite
def tokens(draw, action: str):
    """Owner-token frames: valid ones (half), valid ones with one thing wrong, and garbage."""
    return {
        "mutation": draw(st.sampled_from(MUTATIONS)),
        "job": draw(st.sampled_from([RUNNING_JOB, RUNNING_JOB, STOPPED_JOB])),
        "action": action,
        "nonce": draw(st.binary(max_size=8)),
        "junk": draw(anything),
        "follow": draw(mostly(st.booleans(), anything)),
        "tail": draw(mostly(st.integers(-3, 50) | st.just("all"), anything)),
    }


def _token_frame(svc, spec) -> object:
    m = spec["mutation"]
    who = STRANGER if m == "stranger" else OWNER
    job = 0 if m == "job" else spec["job"]
    action = sorted(msg.ACTIONS - {spec["action"]})[0] if m == "action" else spec["action"]
    expiry = int(time.time()) + {"expired": -1, "far": 10**6}.get(m, 60)
    peer = "16Uiu2HAmOther" if m == "provider" else svc.peer
    nonce = spec["nonce"] + os.urandom(32)  # hypothesis repeats values; the service remembers nonces
    tok = msg.owner_token(who, svc.domain, action, job, peer, nonce[-32:], expiry).to_frame()
    if m == "drop":
        tok.pop("sig")
    elif m == "type":
        tok["job_id"] = spec["junk"]
    elif m == "extra":
        tok["extra"] = spec["junk"]
    elif m == "nonce":
        tok["nonce"] = tok["nonce"][:31]
    elif m == "sig":
        tok["sig"] = bytes(65)
    if spec["action"] == msg.ACTION_LOGS:
        tok["follow"], tok["tail"] = spec["follow"], spec["tail"]
    return tok


def _is_valid(spec) -> bool:
    return spec["mutation"] == "none"


deploy_frames = mostly(
    st.fixed_dictionaries(
        {
            "t": mostly(st.just("deploy"), leaf),
            "job_id": mostly(st.integers(0, 2**64 - 1) | st.sampled_from([RUNNING_JOB]), leaf),
            "round": mostly(st.integers(0, 2**64 - 1), leaf),
            "provider": mostly(st.sampled_from(["0x" + "11" * 20, "0x" + "ab" * 20]), leaf),
            "sigs": mostly(
                st.lists(st.binary(min_size=65, max_size=65), max_size=5),
                st.lists(st.binary(min_size=65, max_size=65) | leaf, max_size=5) | leaf,
            ),
        },
        optional={"extra": leaf},
    ),
    anything,
)

popw_frames = st.builds(
    lambda base, key, value, mutate: {**base, key: value} if mutate else base,
    st.fixed_dictionaries(
        {
            "t": st.just("challenge"),
            "id": st.binary(min_size=32, max_size=32),
            "seed": st.binary(min_size=32, max_size=32),
            "n": st.sampled_from([16, 32]),
            "rounds": st.sampled_from([1, 2, 4]),
            "stride": st.just(1),
            "deadline": st.sampled_from([0.5, 5.0]),
        }
    ),
    st.sampled_from(["t", "id", "seed", "n", "rounds", "stride", "deadline", "extra"]),
    leaf | st.sampled_from([0, 3, 2**13, 2**30, 1e12, float("nan"), -1.0]),
    st.booleans(),
)
popw_frames = mostly(popw_frames, anything)

# What a hostile peer writes: frames, a header announcing more than it sends, raw bytes
chunks = st.lists(
    st.builds(pack, anything)
    | st.integers(0, 2**32 - 1).map(LEN.pack)
    | st.binary(max_size=300),
    max_size=3,
)


class Raw(bytes):
    """A first message written as raw bytes, not as a frame."""


def run_handler(handler, first, rest, *, echo: bool = False, timeout: float = 3.0) -> list:
    """Hostile peer sends ``first`` (a frame, or ``Raw`` bytes), then ``rest`` raw chunks,
    then EOF; returns the frames the node answered."""
    replies: list = []

    async def main():
        peer_end, node_end = memory_pair()

        async def node():
            try:
                await handler(node_end, "fuzz-peer")
            except FrameError:
                pass
            finally:
                await node_end.close()

        async with trio.open_nursery() as nursery:
            if echo:
                listeners = await nursery.start(trio.serve_tcp, _echo, 0)
                port = listeners[0].socket.getsockname()[1]
                handler.__self__.state.update_job(RUNNING_JOB, host_port=port)
            nursery.start_soon(node)
            try:
                if isinstance(first, Raw):
                    await peer_end.stream.write(bytes(first))
                else:
                    await peer_end.send(first)
                for c in rest:
                    await peer_end.stream.write(c)
            except (ConnectionError, FrameError):
                pass
            await peer_end.stream._send.aclose()  # EOF: the peer has nothing more to say
            with trio.move_on_after(timeout):
                while True:
                    try:
                        replies.append(await peer_end.recv(timeout=timeout))
                    except FrameError:
                        break
                    if echo and replies[-1] == {"ok": True}:  # a raw pipe from here on
                        while await peer_end.stream.read(65536):
                            pass
                        break
            await peer_end.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return replies


async def _echo(stream):
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


def _well_formed(reply) -> bool:
    return isinstance(reply, dict) and ("ok" in reply or "t" in reply)


def _outcome(replies: list) -> list:
    """Label each example by the node's first answer (``--hypothesis-show-statistics``)."""
    if not replies:
        event("no answer (stream dropped)")
    else:
        r = replies[0]
        reason = str(r.get("reason", ""))[:28] if isinstance(r, dict) else "?"
        event(f"answer ok={r.get('ok', r.get('t'))} {reason}")
    return replies


@fuzz(150)
@given(frame=deploy_frames, rest=chunks)
def test_deploy_handler(service, frame, rest):
    replies = _outcome(run_handler(service._on_deploy, frame, rest))
    assert len(replies) <= 1 and all(_well_formed(r) for r in replies)
    if replies:
        assert replies[0]["t"] == "refused"  # no chain here: nothing is ever deployed


def _one_owner_answer(service, handler, spec, garbage, raw, rest) -> dict | None:
    """Run a one-frame owner request; its single answer if it was served, else None."""
    first = garbage if raw else _token_frame(service, spec)
    replies = _outcome(run_handler(handler, first, rest))
    # one answer, or none when the first frame itself was broken (oversized, not msgpack)
    assert len(replies) <= 1 and all(_well_formed(r) for r in replies), replies
    if replies and replies[0]["ok"]:  # only the owner's fresh token for this provider and job
        assert _is_valid(spec) and not raw
        return replies[0]
    return None


@fuzz(150)
@given(spec=tokens(msg.ACTION_STATUS), garbage=anything, raw=st.sampled_from([False, False, True]), rest=chunks)
def test_status_handler(service, spec, garbage, raw, rest):
    _one_owner_answer(service, service._on_status, spec, garbage, raw, rest)


@fuzz(150)
@given(spec=tokens(msg.ACTION_CLOSED), garbage=anything, raw=st.sampled_from([False, False, True]), rest=chunks)
def test_closed_handler(service, spec, garbage, raw, rest):
    served = _one_owner_answer(service, service._on_closed, spec, garbage, raw, rest)
    if served is not None:  # no chain here: the job's state is only reported
        assert served["state"] in (msg.RUNNING, msg.STOPPED)


@fuzz(150)
@given(spec=tokens(msg.ACTION_LOGS), garbage=anything, raw=st.sampled_from([False, False, True]), rest=chunks)
def test_logs_handler(service, spec, garbage, raw, rest):
    first = garbage if raw else _token_frame(service, spec)
    replies = _outcome(run_handler(service._on_logs, first, rest))
    assert len(replies) <= 1 and all(r["ok"] is False for r in replies)  # no container engine here


@fuzz(150)
@given(spec=tokens(msg.ACTION_TUNNEL), garbage=anything, raw=st.sampled_from([False, False, True]), rest=chunks)
def test_tunnel_handler(service, spec, garbage, raw, rest):
    first = garbage if raw else _token_frame(service, spec)
    replies = _outcome(run_handler(service._on_tunnel, first, rest, echo=True, timeout=1.0))
    assert len(replies) <= 1 and all(_well_formed(r) for r in replies), replies
    if replies and replies[0].get("ok"):
        assert _is_valid(spec) and spec["job"] == RUNNING_JOB and not raw
    assert service._tunnels[RUNNING_JOB] == 0  # every tunnel's slot was given back


@fuzz(100)
@given(frame=popw_frames, rest=chunks)
def test_popw_handler(service, frame, rest):
    replies = _outcome(run_handler(service._on_popw, frame, rest, timeout=2.0))
    assert all(_well_formed(r) for r in replies)


@fuzz(100)
@given(data=st.binary(max_size=600), proto=st.sampled_from(
    [POPW_PROTOCOL, DEPLOY_PROTOCOL, TUNNEL_PROTOCOL, LOGS_PROTOCOL, STATUS_PROTOCOL, CLOSED_PROTOCOL]))
def test_raw_bytes_on_every_protocol(service, data, proto):
    handler = {
        POPW_PROTOCOL: service._on_popw, DEPLOY_PROTOCOL: service._on_deploy,
        TUNNEL_PROTOCOL: service._on_tunnel, LOGS_PROTOCOL: service._on_logs,
        STATUS_PROTOCOL: service._on_status, CLOSED_PROTOCOL: service._on_closed,
    }[proto]
    replies = run_handler(handler, Raw(data), [], timeout=1.0)
    assert all(_well_formed(r) for r in replies)


def test_a_valid_owner_token_opens_the_tunnel_and_is_not_reusable(service):
    """The fuzz's positive control: the generator's valid case really is served."""
    tok = msg.owner_token(OWNER, service.domain, msg.ACTION_TUNNEL, RUNNING_JOB, service.peer).to_frame()
    replies = run_handler(service._on_tunnel, tok, [b"ping"], echo=True, timeout=1.0)
    assert replies[0] == {"ok": True}
    replies = run_handler(service._on_tunnel, tok, [], echo=True, timeout=1.0)
    assert replies[0]["ok"] is False and "replayed" in replies[0]["reason"]


# the light client's /kaisar/notify/1 ---------------------------------------------------

PUSHER = Identity.generate()  # the peer that pushes (its key is the status signer)
WAITED_JOB = 9


@pytest.fixture(scope="module")
def push_client(service):
    from node.client.api import Client

    client = Client(OWNER, service.host, chain=None)  # type: ignore[arg-type]  # the handler reads host only
    client._waiting[WAITED_JOB] = 1
    return client


@st.composite
def push_frames(draw):
    """Pushed statuses: well-formed ones (signed by the pusher or a stranger, for the
    waited job or another) with one thing wrong at times, and garbage."""
    signer = draw(st.sampled_from([PUSHER, PUSHER, STRANGER]))
    job = draw(st.sampled_from([WAITED_JOB, WAITED_JOB, RUNNING_JOB]))
    fields = {
        "job_id": job, "round": 0, "state": draw(st.sampled_from(["deployed", "running", "failed"])),
        "reason": "", "qc_digest": b"\x01" * 32, "peer": PUSHER.peer_id.to_base58(),
        "container_port": 8080, "image": "img", "started": 1, "expires": 2**40,
    }  # fmt: skip
    env = wire.sign(signer, DEVNET_DOMAIN, "JobStatus", fields, network="devnet", seq=1, ttl_ms=60_000)
    frame = {"t": "status", "status": env.to_bytes(), "qc_sigs": [b"\x02" * 65]}
    mutation = draw(st.sampled_from(["none", "none", "t", "status", "sigs", "sig_len", "drop"]))
    if mutation == "t":
        frame["t"] = draw(anything)
    elif mutation == "status":
        frame["status"] = draw(mostly(st.binary(max_size=200), anything))
    elif mutation == "sigs":
        frame["qc_sigs"] = draw(anything)
    elif mutation == "sig_len":
        frame["qc_sigs"] = [b"\x02" * draw(st.integers(0, 70))]
    elif mutation == "drop":
        del frame[draw(st.sampled_from(sorted(frame)))]
    return draw(mostly(st.just((frame, mutation, signer, job)), anything.map(lambda g: (g, "junk", None, None))))


@fuzz(90)
@given(case=push_frames(), rest=chunks)
def test_client_push_handler(push_client, case, rest):
    frame, mutation, signer, job = case
    push_client._pushed.clear()
    replies = run_handler(lambda framed, _p: push_client._on_push(framed, PUSHER.peer_id), frame, rest, timeout=1.0)
    assert replies == []  # a push gets no answer
    kept = list(push_client._pushed)
    event(f"kept={len(kept)} mutation={mutation}")
    # only the pusher's own status, for the job being waited for, with 65-byte signatures
    assert kept in ([], [(WAITED_JOB, PUSHER.address)])
    if kept:
        assert mutation == "none" and signer is PUSHER and job == WAITED_JOB


def test_client_push_handler_positive_control(push_client):
    """The generator's valid case really is kept (and a peer without a node key is not)."""
    fields = {
        "job_id": WAITED_JOB, "round": 0, "state": "deployed", "reason": "",
        "qc_digest": b"\x01" * 32, "peer": PUSHER.peer_id.to_base58(), "container_port": 8080,
        "image": "img", "started": 1, "expires": 2**40,
    }  # fmt: skip
    env = wire.sign(PUSHER, DEVNET_DOMAIN, "JobStatus", fields, network="devnet", seq=2, ttl_ms=60_000)
    frame = {"t": "status", "status": env.to_bytes(), "qc_sigs": [b"\x02" * 65]}
    push_client._pushed.clear()
    run_handler(lambda f, _p: push_client._on_push(f, "not-a-peer-id"), frame, [], timeout=1.0)
    assert push_client._pushed == {}
    run_handler(lambda f, _p: push_client._on_push(f, PUSHER.peer_id), frame, [], timeout=1.0)
    assert list(push_client._pushed) == [(WAITED_JOB, PUSHER.address)]
    # a push without QC signatures (found by the fuzzer: ``qc_sigs = []``) is not kept
    push_client._pushed.clear()
    empty = {**frame, "qc_sigs": []}
    run_handler(lambda f, _p: push_client._on_push(f, PUSHER.peer_id), empty, [], timeout=1.0)
    assert push_client._pushed == {}
