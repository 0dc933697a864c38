"""`kaisar devnet --demo`: an end-user walks through every step of the seed flow.

wallet -> buy a container (on-chain purchase) -> checkers certify an assignment and
deploy it to a provider -> the user is notified and verifies the certificate itself ->
the user connects through a tunneled libp2p stream on localhost -> a request and its
answer go through -> the user closes the job and gets the unused part refunded.

Every step is printed with the elapsed time (JSON lines ``{"step", "t", ...}`` with
``--json``), ending with ``{"ok": ..., "time_to_service_s": ...}``. ``ok`` is true only
if the HTTP request through the tunnel got the demo service's answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from node.devnet_stack import Stack, open_stack
from node.errors import UserError

DEMO_HOURS = 1.0
READY_TIMEOUT = 120.0
DEPLOY_TIMEOUT = 120.0
ETHER = 10**18


class Reporter:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.t0 = time.monotonic()

    def __call__(self, step: str, **fields: Any) -> None:
        t = round(time.monotonic() - self.t0, 3)
        if self.as_json:
            print(json.dumps({"step": step, "t": t, **fields}), flush=True)
        else:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            print(f"[{t:8.3f}s] {step:<20} {extra}", flush=True)


async def wait_network_ready(s: Stack, emit: Callable[..., None], timeout: float) -> None:
    """Providers advertise and at least one passed PoPW at a checker quorum."""
    with trio.fail_after(timeout):
        while True:
            standing = set().union(*(set(c.standing) for c in s.checker_services))
            if standing:
                emit("popw_certified", providers=len(standing), of=len(s.providers))
                return
            await trio.sleep(0.2)


async def http_get(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: demo\r\n\r\n".encode())
        await stream.send_eof()
        chunks = []
        with trio.fail_after(30):
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
        return b"".join(chunks)


async def play(s: Stack, emit: Callable[..., None]) -> dict[str, Any]:
    from node.client.api import Client
    from node.roles.provider.images import DEMO_HTTP_IMAGE, DEMO_HTTP_PORT

    assert s.user is not None
    client = Client(s.user, s.user_host, s.chain)
    await client.start()
    emit("wallet", address=s.user.address, balance_eth=round(await s.dev.client.balance(s.user.address) / ETHER, 3))
    await wait_network_ready(s, emit, READY_TIMEOUT)

    t_buy = time.monotonic()
    job = await client.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, DEMO_HOURS)
    emit("purchased", job=job, image=DEMO_HTTP_IMAGE, port=DEMO_HTTP_PORT, hours=DEMO_HOURS)
    onchain = await s.chain.get_job(job)
    emit("recorded_on_chain", job=job, owner=onchain.owner, state=onchain.state)

    dep = await client.wait_deployed(job, timeout=DEPLOY_TIMEOUT, progress=lambda line: emit("waiting", info=line))
    emit(
        "deployed_verified",
        job=job,
        provider=dep.provider,
        round=dep.round,
        qc_signers=len(dep.qc_signers),
        signed_stake_share=round(dep.signed_stake / dep.total_stake, 3),
        container_port=dep.container_port,
    )

    ok = False
    async with trio.open_nursery() as nursery:
        port = await nursery.start(client.connect, job, 0)
        emit("tunnel_listening", local=f"127.0.0.1:{port}")
        answer = await http_get(port, f"/cgi-bin/echo?job={job}")
        first_byte_s = time.monotonic() - t_buy
        ok = b"200" in answer.split(b"\r\n", 1)[0] and f"job={job}".encode() in answer
        emit("request_through_tunnel", ok=ok, bytes=len(answer), status=answer.split(b"\r\n", 1)[0].decode(errors="replace"))
        nursery.cancel_scope.cancel()

    closed = await client.close(job)
    emit(
        "closed", job=job, refund_eth=round(closed.refund / ETHER, 6),
        provider_paid_eth=round(closed.provider_paid / ETHER, 6),
        container=closed.provider_state or "provider not told (its chain poll ends it)",
    )  # fmt: skip
    return {"ok": ok, "job": job, "time_to_service_s": round(first_byte_s, 3)}


async def run_demo(
    workdir: Path,
    *,
    as_json: bool = False,
    demo: bool = True,
    keep_running: bool = False,
    checkers: int = 4,
    providers: int = 3,
    chain: str = "embedded",
) -> bool:
    from node.roles.provider.engine import ensure_engine

    emit = Reporter(as_json)
    emit("starting", checkers=checkers, providers=providers, chain=chain)
    docker_host = await trio.to_thread.run_sync(ensure_engine)
    emit("docker_engine", host=docker_host)
    result: dict[str, Any] = {"ok": not demo}
    async with open_stack(checkers=checkers, providers=providers, workdir=workdir, chain=chain) as s:
        emit(
            "network_up",
            rpc=s.rpc,
            bootstrap=s.bootstrap()[0],
            explorer=s.explorer_url,
            devnet_file=str(s.info_path),
        )
        if demo:
            try:
                result = await play(s, emit)
            except (UserError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
                emit("failed", reason=reason)
                result = {"ok": False, "reason": reason}
            emit("result", **result)
        if keep_running:
            emit("running", hint=f"kaisar client ls --devnet {s.info_path}")
            await trio.sleep_forever()
    if as_json and demo:
        print(json.dumps({"ok": result["ok"], "time_to_service_s": result.get("time_to_service_s")}), flush=True)
    return bool(result["ok"])
