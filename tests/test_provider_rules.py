"""Provider rules without docker: owner tokens, deploy acceptance, state, PoPW busy policy."""

from __future__ import annotations

import time

import pytest
import trio

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import ident  # noqa: E402

from node.chain.api import JOB_ASSIGNED, JOB_CLOSED, JOB_OPEN, Job  # noqa: E402
from node.consensus.checkers import make_checker_set  # noqa: E402
from node.consensus.votes import assign_digest, sign  # noqa: E402
from node.devnet import start_network  # noqa: E402
from node.eip712 import Domain  # noqa: E402
from node.popw.challenge import new_challenge  # noqa: E402
from node.popw.inventory import GpuInfo, Inventory  # noqa: E402
from node.popw.protocol import run_challenge  # noqa: E402
from node.popw.prover import Prover  # noqa: E402
from node.roles.provider import messages as msg  # noqa: E402
from node.roles.provider.deploy import DeployRefused, DeployRequest, check_deploy, decode_deploy  # noqa: E402
from node.roles.provider.service import (  # noqa: E402
    POPW_PROTOCOL,
    ProviderService,
    ProviderSettings,
    capacity_slots,
)
from node.roles.provider.state import JobRecord, ProviderState  # noqa: E402

DOMAIN = Domain(1337, "0x" + "ab" * 20)
CHECKERS = [ident(f"c{i}") for i in range(4)]
CSET = make_checker_set([(c.address, s) for c, s in zip(CHECKERS, (4, 3, 2, 1), strict=True)])
ME = ident("me").address
OWNER = ident("owner")
PEER = "16Uiu2HAmProviderPeerIdForTests"


def job(state=JOB_OPEN, provider="0x" + "00" * 20, round_=0) -> Job:
    return Job(7, OWNER.address, b"\0" * 32, b"\0" * 32, 1, "img:1", 8080, 100, 1, state,
               round_, provider, 0, 100, 0, 100, 0, 0)


def request(signers, provider=ME, job_id=7, round_=0) -> DeployRequest:
    d = assign_digest(DOMAIN, job_id, round_, provider)
    return DeployRequest(job_id, round_, provider, tuple(sign(s, d) for s in signers))


def refused(req, j, reason):
    with pytest.raises(DeployRefused, match=reason):
        check_deploy(req, ME, j, CSET, DOMAIN)


def test_deploy_rule():
    check_deploy(request(CHECKERS[:2]), ME, job(), CSET, DOMAIN)  # 7 of 10: quorum
    check_deploy(request(CHECKERS[:2]), ME, job(JOB_ASSIGNED, ME), CSET, DOMAIN)
    refused(request(CHECKERS[1:3]), job(), "stake below quorum")  # 5 of 10
    refused(request([ident("x"), ident("y"), ident("z")]), job(), "unknown signer")
    refused(request(CHECKERS[:2], provider=ident("other").address), job(), "names provider")
    refused(request(CHECKERS[:2]), job(state=0), "does not exist")
    refused(request(CHECKERS[:2]), job(JOB_ASSIGNED, ident("other").address), "assigned on chain to")
    refused(request(CHECKERS[:2]), job(JOB_ASSIGNED, ME, round_=1), "assigned in round 1")
    refused(request(CHECKERS[:2]), job(JOB_OPEN, round_=2), "round 0 is closed")
    refused(request(CHECKERS[:2]), job(JOB_CLOSED), "ended on chain")
    # A signature for another domain (chain or contract) recovers to a stranger
    other = Domain(1, "0x" + "ab" * 20)
    d = assign_digest(other, 7, 0, ME)
    bad = DeployRequest(7, 0, ME, tuple(sign(s, d) for s in CHECKERS[:3]))
    refused(bad, job(), "unknown signer")
    # A doubled signature counts once
    twice = request(CHECKERS[:1])
    refused(DeployRequest(7, 0, ME, twice.sigs * 2), job(), "duplicate signer")


@pytest.mark.parametrize(
    "frame, reason",
    [
        (None, "not a deploy frame"),
        ({"t": "deploy", "job_id": 1}, "needs job_id"),
        ({"t": "deploy", "job_id": 1, "round": 0, "provider": ME, "sigs": []}, "no quorum certificate"),
        ({"t": "deploy", "job_id": -1, "round": 0, "provider": ME, "sigs": [b"x" * 65]}, "job_id"),
        ({"t": "deploy", "job_id": 1, "round": 0, "provider": "me", "sigs": [b"x" * 65]}, "provider"),
        ({"t": "deploy", "job_id": 1, "round": 0, "provider": ME, "sigs": [b"x"]}, "65 bytes"),
    ],
)
def test_decode_deploy_refuses(frame, reason):
    with pytest.raises(DeployRefused, match=reason):
        decode_deploy(frame)


def test_owner_token_rule():
    now = time.time()
    tok = msg.tunnel_token(OWNER, DOMAIN, 7, PEER, expiry=int(now) + 30)
    msg.check_token(DOMAIN, msg.decode_token(tok.to_frame(), "tunnel"), PEER, OWNER.address, now)
    with pytest.raises(msg.AccessDenied, match="expired"):
        msg.check_token(DOMAIN, tok, PEER, OWNER.address, now + 31)
    with pytest.raises(msg.AccessDenied, match="job owner"):
        msg.check_token(DOMAIN, tok, "another-peer", OWNER.address, now)
    with pytest.raises(msg.AccessDenied, match="job owner"):
        msg.check_token(Domain(1), tok, PEER, OWNER.address, now)
    with pytest.raises(msg.AccessDenied, match="job owner"):
        msg.check_token(DOMAIN, tok, PEER, ident("someone").address, now)
    far = msg.tunnel_token(OWNER, DOMAIN, 7, PEER, expiry=int(now) + 3600)
    with pytest.raises(msg.AccessDenied, match="longer"):
        msg.check_token(DOMAIN, far, PEER, OWNER.address, now)
    # a logs token is not a tunnel token
    logs = msg.owner_token(OWNER, DOMAIN, "logs", 7, PEER)
    with pytest.raises(msg.AccessDenied, match="malformed"):
        msg.decode_token(logs.to_frame(), "tunnel")
    forged = msg.OwnerToken("tunnel", 8, tok.nonce, tok.expiry, tok.sig)  # other job
    with pytest.raises(msg.AccessDenied, match="job owner"):
        msg.check_token(DOMAIN, forged, PEER, OWNER.address, now)


def test_nonces_survive_reopen(tmp_path):
    st = ProviderState(tmp_path / "s.sqlite")
    assert st.use_nonce(b"n" * 32, int(time.time()) + 60, time.time())
    assert not st.use_nonce(b"n" * 32, int(time.time()) + 60, time.time())
    st.close()
    st = ProviderState(tmp_path / "s.sqlite")
    assert not st.use_nonce(b"n" * 32, int(time.time()) + 60, time.time())
    assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_capacity_slots_from_inventory():
    gpus = [GpuInfo(i, "RTX", f"GPU-{i}", 24000, 0, 0, 40, 100.0, 450.0) for i in range(3)]
    assert capacity_slots(Inventory(gpus=gpus), 2) == (["GPU-0", "GPU-1"], True)
    assert capacity_slots(Inventory(), 2) == (["cpu0", "cpu1"], False)


def live_record(job_id: int, slot: str) -> JobRecord:
    now = time.time()
    return JobRecord(job_id, 0, b"\1" * 32, (), OWNER.address, "img", 80, (slot,), "running",
                     "", "cid", 1234, now, now + 120)


async def test_popw_answered_when_free_busy_when_all_slots_serve_jobs(tmp_path):
    async with start_network(2) as (phost, checker):
        svc = ProviderService(phost, ProviderSettings(max_gpus=1), tmp_path / "p.sqlite",
                              inventory=Inventory(), prover=Prover())
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            async with checker.open_stream(phost.peer_id, POPW_PROTOCOL) as framed:
                verdict = await run_challenge(framed, new_challenge(32, 3, 30.0))
            assert verdict.status == "pass", verdict
            svc.state.put_job(live_record(1, "cpu0"))
            async with checker.open_stream(phost.peer_id, POPW_PROTOCOL) as framed:
                verdict = await run_challenge(framed, new_challenge(32, 3, 30.0))
            assert verdict.status == "busy"
            assert 60 < svc.busy_seconds() <= 120  # retry when the job ends
            nursery.cancel_scope.cancel()
