"""The light client: buy a container, wait for a verified deployment, reach it, close it.

One entry object, ``Client``. Two ways to get one::

    # own host and chain connection (what the CLI does)
    async with Client.open(key=identity, rpc=url, deployment=path, bootstrap=[...]) as c:
        job = await c.buy("cpu", 1, "kaisar/demo-http:latest", 8080, hours=1)
        dep = await c.wait_deployed(job, timeout=60, progress=print)
        await c.connect(job, 8080)        # serves 127.0.0.1:8080 until cancelled

    # an in-process network passes its running host and chain
    c = Client(identity, host, chain)
    await c.start()

Resource rules: ``Client`` owns nothing it was given (host, chain); ``Client.open``
owns and closes both. Every wait on the network has a deadline. Errors are
``ClientError`` subclasses (or the chain's ``ChainError``) whose message says what is
missing or what to do; all are ``UserError`` for the CLI.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_utils import keccak
from libp2p.peer.id import ID
from web3.logs import DISCARD

from node import trace, wire
from node.chain.api import JOB_ASSIGNED, JOB_OPEN, Job, KaisarChain
from node.chain.deploy import Deployment as ChainDeployment
from node.client import verify
from node.client.errors import (
    ClientError,
    JobEnded,
    NoProviderFits,
    VerificationFailed,
    WaitTimeout,
)
from node.client.offers import Offer, OfferBook, check_fit, price_per_second
from node.consensus import votes
from node.consensus.checkers import CheckerSet, make_checker_set
from node.eip712 import Domain
from node.identity import Identity, peer_id_to_address
from node.p2p import dial
from node.p2p.host import HostOptions, KaisarHost, P2PError, open_host
from node.roles.provider import client as pclient
from node.roles.provider import messages as msg

log = logging.getLogger("kaisar.client")

Progress = Callable[[str], None]

JOB_STATES = {1: "open", 2: "assigned", 3: "closed", 4: "done", 5: "failed", 6: "expired"}
AD_WAIT_S = 12.0  # a provider re-advertises every 10 s by default
POLL_INTERVAL_S = 0.5
STATUS_QUERY_TIMEOUT_S = 10.0
MAX_IMAGE_BYTES = 256
CLOSE_NOTICE_TIMEOUT_S = 5.0  # telling the provider of a close: best effort, this long
PUSH_TIMEOUT_S = 5.0  # a provider's status push must arrive within this once the stream opens
MAX_PUSH_SIGS = 256
MAX_PUSHERS_PER_JOB = 16  # distinct signers whose pushed status is kept per waited job
# chain_qc reads the newest QC_SCAN_FIRST blocks first, then ranges twice as long
# further back (up to QC_SCAN_MAX each). eth-tester's eth_getLogs grows faster than its
# span (CPU: 8 blocks ~6 ms, 64 blocks ~240 ms), and a waiting client nearly always
# finds the assignment in the newest few blocks.
QC_SCAN_FIRST = 8
QC_SCAN_MAX = 2048


@dataclass(frozen=True)
class JobView:
    """A job as the chain records it, plus the provider's signed status when reachable."""

    job_id: int
    owner: str
    state: str  # open | assigned | closed | done | failed | expired
    gpu_class: str
    count: int
    image: str
    port: int
    duration: int
    price_per_second: int
    deposit: int
    round: int
    provider: str | None
    started: int
    remaining: int
    provider_status: dict[str, Any] | None = None  # JobStatus body, signature checked

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if self.provider_status is not None:
            out["provider_status"] = {
                k: (v.hex() if isinstance(v, bytes) else v) for k, v in self.provider_status.items()
            }
        return out


@dataclass(frozen=True)
class CloseResult:
    job_id: int
    refund: int  # wei returned to the owner
    provider_paid: int  # wei credited to the provider for time served
    tx_fee: int  # wei the close transaction cost in gas
    # the job's state at the provider once told of the close ("stopped"); None when the
    # provider could not be told (not known here, unreachable): it then sees the close
    # at its next chain poll
    provider_state: str | None = None


def job_view(job: Job, status: dict[str, Any] | None = None) -> JobView:
    zero = "0x" + "0" * 40
    return JobView(
        job_id=job.job_id,
        owner=job.owner,
        state=JOB_STATES.get(job.state, str(job.state)),
        gpu_class=job.gpu_class.rstrip(b"\x00").decode(errors="replace"),
        count=job.count,
        image=job.image,
        port=job.port,
        duration=job.duration,
        price_per_second=job.price,
        deposit=job.deposit,
        round=job.round,
        provider=None if job.provider == zero else job.provider,
        started=job.started,
        remaining=job.remaining,
        provider_status=status,
    )


def spec_hash(gpu_class: str, count: int, image: str, port: int) -> bytes:
    """What the buyer asked for, hashed canonically (recorded on chain with the job)."""
    spec = {"gpu_class": gpu_class, "count": count, "image": image, "port": port}
    return keccak(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode())


def check_order(gpu_class: str, count: int, image: str, port: int, hours: float) -> int:
    """Validate a purchase; return its duration in seconds."""
    try:
        votes.gpu_class_id(gpu_class)
    except ValueError:
        raise ClientError(
            f"bad GPU class {gpu_class!r}: 1..32 ASCII bytes, e.g. 'cpu' or 'a100'"
        ) from None
    if not 1 <= count <= 64:
        raise ClientError(f"bad count {count}: 1..64 GPUs")
    if not image or len(image.encode()) > MAX_IMAGE_BYTES:
        raise ClientError(f"bad image {image!r}: 1..{MAX_IMAGE_BYTES} bytes")
    if not 1 <= port <= 65535:
        raise ClientError(f"bad port {port}: 1..65535 (the container's port)")
    duration = round(hours * 3600)
    if duration < 60:
        raise ClientError(f"bad duration {hours} h: at least one minute (0.02 h)")
    return duration


class Client:
    """The light client of one owner key over a running host and chain connection."""

    def __init__(
        self,
        identity: Identity,
        host: KaisarHost,
        chain: KaisarChain,
        *,
        ad_wait: float = AD_WAIT_S,
        poll_interval: float = POLL_INTERVAL_S,
    ) -> None:
        self.identity = identity
        self.host = host
        self.chain = chain
        self.ad_wait = ad_wait
        self.poll_interval = poll_interval
        self.offers = OfferBook()
        self._peers: dict[str, str] = {}  # provider address -> peer id, from signed gossip
        self._statuses: dict[tuple[int, str], wire.Envelope] = {}  # (job, provider) -> newest
        # (job, provider) -> the provider's own pushed status and its QC copy (jobs in
        # self._waiting only)
        self._pushed: dict[tuple[int, str], tuple[wire.Envelope, list[bytes]]] = {}
        self._waiting: dict[int, int] = {}  # job -> wait_deployed calls in progress
        self._assigned_to: dict[int, str] = {}  # waited job -> provider the chain names
        # job -> (deployment verified by wait_deployed, expiry in ms of the status it
        # used, trio time of the verification)
        self._verified: dict[int, tuple[verify.Deployment, int, float]] = {}
        self._heard = trio.Event()
        self.heard_count = 0  # messages heard so far (a waiter compares it: no lost wake-up)
        self._started = False
        self.last_status_source = ""  # push | gossip | query: what the last verification used

    # lifecycle -------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        key: Identity,
        rpc: str,
        deployment: ChainDeployment | Path | str,
        bootstrap: Sequence[str] = (),
        network: str = "devnet",
        wire_domain: Domain | None = None,
        listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        **kwargs: Any,
    ) -> AsyncIterator[Client]:
        """Connect to the chain and join the network with ``key``; close both on exit.

        ``wire_domain`` is the EIP-712 domain gossip is signed under; nodes use
        ``Domain(chain_id)`` (``node.runner.domain_for``), which is the default.
        """
        dep = deployment if isinstance(deployment, ChainDeployment) else Path(deployment)
        chain = await KaisarChain.open(rpc, dep)
        domain = wire_domain or Domain(chain.deployment.chain_id)
        options = HostOptions(listen=tuple(listen), bootstrap=tuple(bootstrap), dht=False)
        try:
            async with open_host(key, network=network, domain=domain, options=options) as host:
                client = cls(key, host, chain, **kwargs)
                await client.start()
                yield client
        except P2PError as exc:
            raise ClientError(f"p2p: {exc}") from None

    async def start(self) -> None:
        """Listen to ads and job statuses (call once, inside the host's lifetime)."""
        if self._started:
            return
        self._started = True
        await self.host.subscribe(msg.AD_TOPIC, self._on_ad)
        await self.host.subscribe(msg.STATUS_TOPIC, self._on_status)
        if hasattr(self.host, "set_handler"):
            self.host.set_handler(msg.NOTIFY_PROTOCOL, self._on_push)

    async def _on_ad(self, env: wire.Envelope, peer: ID) -> None:
        if env.type != "ProviderAd":
            return
        offer = Offer.from_envelope(env)
        self.offers.add(offer)
        self._peers[offer.provider] = offer.peer
        self._wake()

    async def _on_status(self, env: wire.Envelope, peer: ID) -> None:
        if env.type == "JobStatus":
            self._peers[env.signer] = env.body["peer"]
            self._statuses[(env.body["job_id"], env.signer)] = env
            self._wake()
        elif env.type == "Heartbeat":
            self._peers.setdefault(env.signer, env.body["peer"])

    async def _on_push(self, framed: Any, peer: ID) -> None:
        """A provider pushes its signed status of a job this client is waiting for (the
        moment the container is up). Taken only from the peer whose key signed it, so
        nobody can pair another provider's status with a forged QC copy; the status and
        the QC are verified in ``_try_verify`` like a queried one."""
        obj = await framed.recv(max_size=msg.NOTIFY_MAX_BYTES, timeout=PUSH_TIMEOUT_S)
        try:
            sender = peer_id_to_address(peer)
        except Exception:  # not a secp256k1 peer id: no provider key pushes from there
            log.info("event=push_rejected peer=%s reason=not a node key", peer)
            return
        try:
            if type(obj) is not dict or obj.get("t") != "status":
                raise ValueError("not a status frame")
            sigs = obj.get("qc_sigs")
            if type(sigs) is not list or not 0 < len(sigs) <= MAX_PUSH_SIGS or not all(
                type(x) is bytes and len(x) == 65 for x in sigs
            ):  # a pushed status is a deployed one: it always comes with its QC
                raise ValueError("qc_sigs must be a list of 1 or more 65-byte signatures")
            env = wire.decode(
                obj.get("status", b""),
                domain=self.host.domain,
                network=self.host.network,
                allowed_types=frozenset({"JobStatus"}),
            )
            if env.signer != sender:
                raise ValueError(f"status signed by {env.signer}, pushed by another peer")
        except (ValueError, wire.WireError) as exc:
            log.info("event=push_rejected peer=%s reason=%s", peer, exc)
            return
        job_id = env.body["job_id"]
        if job_id not in self._waiting:
            return  # nobody asked: keep nothing
        key = (job_id, env.signer)
        if (
            key not in self._pushed
            and env.signer != self._assigned_to.get(job_id)
            and sum(k[0] == job_id for k in self._pushed) >= MAX_PUSHERS_PER_JOB
        ):
            return  # only the assigned provider's counts: others cannot crowd it out
        self._pushed[key] = (env, sigs)
        self._peers[env.signer] = env.body["peer"]
        self._wake()

    def _wake(self) -> None:
        self.heard_count += 1
        self._heard.set()
        self._heard = trio.Event()

    async def _heard_something(self, timeout: float, head: int | None = None) -> None:
        """Return on gossip heard, after ``timeout`` s, or (with ``head``, the chain
        client's ``head_version`` read before) when this process mined a new block."""
        heard = self._heard
        with trio.move_on_after(timeout):
            if head is None:
                await heard.wait()
                return
            async with trio.open_nursery() as nursery:

                async def first(wait: Callable[[], Awaitable[None]]) -> None:
                    await wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first, heard.wait)
                nursery.start_soon(first, lambda: self.chain.client.wait_head(head, timeout))

    # buy ---------------------------------------------------------------------------

    async def fitting_offers(
        self, gpu_class: str, count: int, max_price: int | None = None, *, wait: float | None = None
    ) -> list[Offer]:
        """Fresh offers that fit, cheapest first; waits up to ``wait`` s to hear one.

        Raises NoProviderFits naming what is missing (class, free GPUs, price).
        """
        deadline = trio.current_time() + (self.ad_wait if wait is None else wait)
        while True:
            try:
                return check_fit(self.offers.fresh(), gpu_class, count, max_price)
            except ValueError as exc:
                left = deadline - trio.current_time()
                if left <= 0:
                    raise NoProviderFits(
                        f"no provider can take this job: {exc}; nothing was paid"
                    ) from None
            await self._heard_something(min(left, 1.0))

    async def buy(
        self,
        gpu_class: str,
        count: int,
        image: str,
        port: int,
        hours: float,
        max_price: int | None = None,
    ) -> int:
        """Buy a container: check fresh ads first, then pay the escrow; returns the job id.

        ``max_price`` is wei per GPU-hour. The job pays the cheapest fitting offer's
        price (rounded up to wei per second for the whole job).
        """
        duration = check_order(gpu_class, count, image, port, hours)
        if max_price is not None and max_price <= 0:
            raise ClientError(f"bad max price {max_price}: wei per GPU-hour, > 0")
        best = (await self.fitting_offers(gpu_class, count, max_price))[0]
        pps = price_per_second(best.price_per_gpu_hour, count)
        job_id = await self.chain.create_job(
            self.identity,
            spec_hash=spec_hash(gpu_class, count, image, port),
            gpu_class=votes.gpu_class_id(gpu_class),
            count=count,
            image=image,
            port=port,
            duration=duration,
            price_per_second=pps,
        )
        trace.mark("purchase_mined", job_id)
        log.info(
            "event=job_bought job=%d class=%s count=%d price_per_second=%d",
            job_id,
            gpu_class,
            count,
            pps,
        )
        return job_id

    # chain reads -------------------------------------------------------------------

    async def my_job(self, job_id: int) -> Job:
        """The job, if it exists and this key owns it."""
        if job_id < 0:
            raise ClientError(f"bad job id {job_id}")
        job = await self.chain.get_job(job_id)
        if not job.exists:
            raise ClientError(
                f"unknown job {job_id}: no such job on this chain (see 'kaisar client ls')"
            )
        if job.owner != self.identity.address:
            raise ClientError(
                f"job {job_id} belongs to {job.owner}, not to this key {self.identity.address}"
            )
        return job

    async def checker_set(self) -> CheckerSet:
        cs = await self.chain.active_checkers()
        if not cs.node_keys:
            raise VerificationFailed(
                "the chain has no active checkers: no certificate can be valid"
            )
        return make_checker_set(zip(cs.node_keys, cs.stakes, strict=True))

    async def chain_qc(self, job: Job) -> list[bytes]:
        """The AssignVote signatures of the transaction that assigned ``job`` (may be [])."""
        escrow, w3 = self.chain.escrow, self.chain.client.w3
        start = self.chain.deployment.block

        def read() -> list[bytes]:
            # newest blocks first, in ranges that double going back (see QC_SCAN_FIRST)
            hi = int(w3.eth.block_number)
            span = QC_SCAN_FIRST
            while hi >= start:
                lo = max(start, hi - span + 1)
                sigs = match(lo, hi)
                if sigs:
                    return sigs
                hi, span = lo - 1, min(span * 2, QC_SCAN_MAX)
            return []

        def match(lo: int, hi: int) -> list[bytes]:
            for entry in reversed(self._assign_logs(lo, hi, job.job_id)):
                tx = w3.eth.get_transaction(entry["transactionHash"])
                try:
                    fn, args = escrow.decode_function_input(tx["input"])
                except ValueError:  # assigned through another contract: no direct input
                    continue
                if (
                    fn.fn_name == "assign"
                    and args["job_id"] == job.job_id
                    and args["round"] == job.round
                ):
                    return [bytes(s) for s in args["sigs"]]
            return []

        return await self.chain.client.run(read)

    def _assign_logs(self, lo: int, hi: int, job_id: int) -> list[Any]:
        """(worker thread) ``JobAssigned`` logs of ``job_id`` in blocks lo..hi."""
        return list(
            self.chain.escrow.events.JobAssigned().get_logs(
                from_block=lo, to_block=hi, argument_filters={"job_id": job_id}
            )
        )

    async def ls(self) -> list[JobView]:
        """This key's jobs (JobCreated events by owner), oldest first, with chain state."""
        escrow, owner = self.chain.escrow, self.identity.address
        start = self.chain.deployment.block

        def read() -> list[int]:
            entries = escrow.events.JobCreated().get_logs(
                from_block=start, argument_filters={"owner": owner}
            )
            return sorted({int(e["args"]["job_id"]) for e in entries})

        ids = await self.chain.client.run(read)
        return [job_view(await self.chain.get_job(i)) for i in ids]

    # provider lookup ---------------------------------------------------------------

    def provider_peer(self, provider: str) -> ID | None:
        """The provider's peer id from its own signed gossip, or a connected peer's key."""
        known = self._peers.get(provider)
        if known:
            return ID.from_base58(known)
        for peer in self.host.connected_peers():
            try:
                if peer_id_to_address(peer) == provider:
                    return peer
            except Exception:  # not a secp256k1 peer id
                continue
        return None

    async def reach(self, provider: str) -> ID | None:
        """The provider's peer, dialled with its ad's addresses when not connected (None
        if nothing was heard from it). A deployment verified from gossip alone (status
        + chain QC) never connected to the provider: tunnels and logs need this first."""
        peer = self.provider_peer(provider)
        # A fresh client (one CLI command) has heard nobody yet: give the provider's
        # periodic ad up to ad_wait to arrive before saying it is unknown.
        # A status names the peer but not its addresses: wait for the ad too, unless
        # already connected.
        deadline = trio.current_time() + self.ad_wait

        def reachable() -> bool:
            return peer is not None and (
                self.offers.get(provider) is not None
                or peer in self.host.connected_peers()
            )

        while not reachable() and trio.current_time() < deadline:
            await self._heard_something(min(deadline - trio.current_time(), 1.0))
            peer = self.provider_peer(provider)
        if peer is None:
            return None
        offer = self.offers.get(provider)
        if offer is not None and peer not in self.host.connected_peers():
            try:  # direct addresses first, then the relay addresses of the ad
                await dial.connect(self.host, peer, offer.addrs)
            except P2PError as exc:
                log.debug("event=provider_dial_failed peer=%s err=%s", peer, exc)
        return peer

    async def _provider_status(self, job: Job) -> tuple[wire.Envelope, list[bytes]] | None:
        """Ask the assigned provider (as owner) for its signed status and QC; None if unreachable."""
        peer = await self.reach(job.provider)
        if peer is None:
            return None
        with trio.move_on_after(STATUS_QUERY_TIMEOUT_S):
            try:
                return await pclient.query_status(
                    self.host, peer, self.identity, self.chain.domain, job.job_id
                )
            except (pclient.ProviderRefused, P2PError, wire.WireError, OSError) as exc:
                log.debug("event=status_query_failed job=%d err=%s", job.job_id, exc)
            except Exception as exc:  # frame errors, resets: the provider is not ready yet
                log.debug("event=status_query_failed job=%d err=%r", job.job_id, exc)
        return None

    # wait -------------------------------------------------------------------------

    async def wait_deployed(
        self, job_id: int, *, timeout: float = 120.0, progress: Progress | None = None
    ) -> verify.Deployment:
        """Return once the job is assigned on chain, certified by a checker quorum and
        reported up by the assigned provider's signature; every part verified here.

        How it learns each part, fastest first: the chain is re-read when this process
        mined a block or every ``poll_interval``; the provider's status arrives pushed
        by the provider the moment the container is up (``/kaisar/notify/1``), or
        gossiped, or asked for (at most once per ``poll_interval``); the checker set and
        the chain's QC are read as soon as the assignment is seen, while the container
        starts.

        Raises WaitTimeout (naming the missing step), JobEnded, or VerificationFailed
        when a claim is forged (the provider's QC or status does not verify).
        """
        say = _Once(progress)
        job = await self.my_job(job_id)
        w = _Wait(missing="the on-chain assignment", read_at=trio.current_time())
        self._waiting[job_id] = self._waiting.get(job_id, 0) + 1
        try:
            with trio.move_on_after(timeout):
                try:
                    async with trio.open_nursery() as nursery:
                        found = await self._wait_loop(job, w, say, nursery)
                        nursery.cancel_scope.cancel()  # a proof read still running
                except BaseExceptionGroup as group:  # callers catch the error itself
                    if len(group.exceptions) == 1:
                        raise group.exceptions[0] from None
                    raise
                return found
        finally:
            left = self._waiting.pop(job_id) - 1
            if left:
                self._waiting[job_id] = left
            else:
                self._assigned_to.pop(job_id, None)
                for key in [k for k in self._pushed if k[0] == job_id]:
                    del self._pushed[key]
        raise WaitTimeout(
            f"job {job_id} not deployed after {timeout:g} s: still waiting for {w.missing}"
        )

    async def _wait_loop(
        self, job: Job, w: _Wait, say: _Once, nursery: trio.Nursery
    ) -> verify.Deployment:
        job_id = job.job_id
        while True:
            heard = self.heard_count
            if job.state == JOB_OPEN:
                say("waiting for assignment")
                w.missing = "the on-chain assignment (no checker quorum assigned the job yet)"
            elif job.state == JOB_ASSIGNED:
                trace.mark("client_saw_assigned", job_id)
                say(f"assigned to {job.provider} round {job.round}")
                say("waiting for provider")
                w.missing = f"the provider's signed status (provider {job.provider} did not answer)"
                self._assigned_to[job_id] = job.provider
                key = (job.round, job.provider)
                if key not in w.proofs:  # read them while the container starts
                    w.proofs[key] = slot = _Proofs()
                    nursery.start_soon(self._read_proofs, job, slot)
                found = self._still_verified(job) or await self._try_verify(job, w, nursery)
                if found is not None:
                    trace.mark("client_verified", job_id)
                    say("deployed")
                    return found
            else:
                raise JobEnded(
                    f"job {job_id} ended on chain: {JOB_STATES.get(job.state, job.state)}"
                )
            # gossip or a push (a status, an ad), a block this process mined, or the poll
            head = self.chain.client.head_version
            next_read = w.read_at + self.poll_interval
            if self.heard_count == heard:  # else something arrived meanwhile: look now
                await self._heard_something(max(0.0, next_read - trio.current_time()), head)
            if self.chain.client.head_version != head or trio.current_time() >= next_read:
                job = await self.chain.get_job(job_id)
                w.read_at = trio.current_time()
            # else a message was heard: look at it with the job as last read

    async def _read_proofs(self, job: Job, slot: _Proofs) -> None:
        slot.value = (await self.checker_set(), await self.chain_qc(job))
        slot.done.set()

    def _still_verified(self, job: Job) -> verify.Deployment | None:
        """This client's own verification of the same assignment, while the provider's
        status it rests on is unexpired (``connect`` right after ``wait``)."""
        got = self._verified.get(job.job_id)
        if got is None or got[1] <= wire.now_ms():
            return None
        dep = got[0]
        return dep if (dep.round, dep.provider) == (job.round, job.provider) else None

    def recently_verified(self, job_id: int, max_age: float) -> tuple[verify.Deployment, float] | None:
        """This client's verification of ``job_id`` and its trio time, if it is at most
        ``max_age`` s old and its status unexpired (``connect`` right after ``wait``)."""
        got = self._verified.get(job_id)
        if got is None or got[1] <= wire.now_ms() or trio.current_time() - got[2] > max_age:
            return None
        return got[0], got[2]

    def _gossiped_status(self, job: Job) -> wire.Envelope | None:
        """The assigned provider's newest gossiped status for this round, if live and fresh
        (its signature, network and freshness were checked when it arrived)."""
        env = self._statuses.get((job.job_id, job.provider))
        if env is None or env.body["expiry"] <= wire.now_ms() or env.body["round"] != job.round:
            return None
        return env if env.body["state"] in verify.LIVE_STATES else None

    def _pushed_status(self, job: Job) -> tuple[wire.Envelope, list[bytes]] | None:
        """The assigned provider's pushed status for this round and its QC copy, if
        unexpired (signature, network and sender were checked when it arrived)."""
        got = self._pushed.get((job.job_id, job.provider))
        if got is None:
            return None
        env = got[0]
        if env.body["expiry"] <= wire.now_ms() or env.body["round"] != job.round:
            return None
        return got

    async def _try_verify(
        self, job: Job, w: _Wait, nursery: trio.Nursery
    ) -> verify.Deployment | None:
        """Verify the deployment from the provider's status, the first of: pushed by the
        provider (with its QC copy); gossiped when live (the chain's QC alone then
        certifies the assignment); the provider's answer to a status query (its QC copy
        is verified too). Queries run in the background, at most once per poll interval,
        so a push or gossip is looked at while one is in flight. Every non-empty QC
        source must verify against the on-chain checker set. None: not up yet."""
        key = (job.round, job.provider)
        slot = w.proofs[key]
        env: wire.Envelope | None = None
        provider_sigs: list[bytes] = []
        source = ""
        pushed = self._pushed_status(job)
        if pushed is not None:
            (env, provider_sigs), source = pushed, "push"
        elif (gossiped := self._gossiped_status(job)) is not None:
            await slot.done.wait()
            if slot.get()[1]:  # a QC on chain to pair it with (else ask the provider)
                env, source = gossiped, "gossip"
        if env is None and key in w.answers:
            (env, provider_sigs), source = w.answers[key], "query"
            if env.body["state"] not in verify.LIVE_STATES and env.signer == job.provider:
                env = None  # not up yet (or failed: checkers will move the job)
        if env is None:
            now = trio.current_time()
            if not w.querying and now - w.queried_at >= self.poll_interval:
                w.querying, w.queried_at = True, now
                nursery.start_soon(self._query, job, w)
            return None
        trace.mark("client_got_status", job.job_id)
        await slot.done.wait()
        checkers, on_chain = slot.get()
        try:
            dep = verify.verify_deployment(
                self.chain.domain, checkers, job, env, [on_chain, provider_sigs]
            )
        except verify.Rejected as exc:
            raise VerificationFailed(
                f"job {job.job_id}: deployment does not verify: {exc}"
            ) from None
        self._verified[job.job_id] = (dep, int(env.body["expiry"]), trio.current_time())
        self.last_status_source = source
        return dep

    async def _query(self, job: Job, w: _Wait) -> None:
        """One status query to the assigned provider; its answer wakes the wait."""
        try:
            got = await self._provider_status(job)
        finally:
            w.querying = False
        if got is not None:
            w.answers[(job.round, job.provider)] = got
            self._wake()

    # status, logs, close ------------------------------------------------------------

    async def status(self, job_id: int) -> JobView:
        """The job on chain, with the provider's signed status when it answers."""
        job = await self.my_job(job_id)
        body = None
        if job.state == JOB_ASSIGNED:
            got = await self._provider_status(job)
            if got is not None and got[0].signer == job.provider:
                body = {k: v for k, v in got[0].body.items()}
        return job_view(job, body)

    async def logs(self, job_id: int, *, follow: bool = False) -> AsyncIterator[bytes]:
        """The container's output, from the provider the chain assigned the job to."""
        job = await self.my_job(job_id)
        if job.state != JOB_ASSIGNED:
            raise ClientError(f"job {job_id} has no container: it is {JOB_STATES.get(job.state)}")
        peer = await self.reach(job.provider)
        if peer is None:
            raise ClientError(
                f"provider {job.provider} of job {job_id} is unknown here: no ad or status heard yet"
            )
        try:
            async for chunk in pclient.stream_logs(
                self.host, peer, self.identity, self.chain.domain, job_id, follow=follow
            ):
                yield chunk
        except pclient.ProviderRefused as exc:
            raise ClientError(f"provider refused logs of job {job_id}: {exc.reason}") from None

    async def close(self, job_id: int) -> CloseResult:
        """End the job now: the provider is paid for time served, the rest is refunded."""
        job = await self.my_job(job_id)
        if job.state not in (JOB_OPEN, JOB_ASSIGNED):
            raise JobEnded(
                f"job {job_id} is already {JOB_STATES.get(job.state)}: nothing to refund"
            )
        receipt = await self.chain.close_job(self.identity, job_id)
        ev = self.chain.escrow.events.JobClosed().process_receipt(receipt, errors=DISCARD)
        args = ev[0]["args"] if ev else {}
        fee = int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice", 0))
        told = await self._tell_closed(job) if job.state == JOB_ASSIGNED else None
        return CloseResult(
            job_id, int(args.get("refund", 0)), int(args.get("provider_paid", 0)), fee, told
        )

    async def _tell_closed(self, job: Job) -> str | None:
        """Tell the assigned provider the job is closed on chain, so it stops the container
        and frees the slot now; its state there, or None if it could not be told."""
        with trio.move_on_after(CLOSE_NOTICE_TIMEOUT_S):
            try:
                peer = await self.reach(job.provider)
                if peer is None:
                    return None
                return await pclient.notify_closed(
                    self.host, peer, self.identity, self.chain.domain, job.job_id
                )
            except Exception as exc:  # refused, unreachable, reset: its chain poll will see it
                log.info("event=close_notice_failed job=%d err=%r", job.job_id, exc)
        return None

    # connect -----------------------------------------------------------------------

    async def connect(
        self,
        job_id: int,
        local_port: int,
        *,
        host: str = "127.0.0.1",
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``host:local_port`` until cancelled; each TCP connection is one tunnel.

        ``task_status.started(port)`` reports the bound port (``local_port=0``: any).
        """
        from node.client.forward import Forwarder

        await Forwarder(self, job_id).serve(local_port, host=host, task_status=task_status)


class _Proofs:
    """The checker set and the chain's QC of one (round, provider), read in the
    background from the moment ``wait`` sees the assignment."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: tuple[CheckerSet, list[bytes]] | None = None

    def get(self) -> tuple[CheckerSet, list[bytes]]:
        assert self.value is not None
        return self.value


@dataclass
class _Wait:
    """One ``wait_deployed`` call's progress."""

    missing: str
    read_at: float  # trio time of the last chain read of the job
    queried_at: float = float("-inf")  # trio time of the last status query
    querying: bool = False  # a status query is in flight
    # (round, provider) -> the provider's latest answer to a status query (status, QC copy)
    answers: dict[tuple[int, str], tuple[wire.Envelope, list[bytes]]] = field(default_factory=dict)
    proofs: dict[tuple[int, str], _Proofs] = field(default_factory=dict)


class _Once:
    """Progress lines, each said once, in order."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._said: set[str] = set()

    def __call__(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            if self._progress is not None:
                self._progress(line)


def unix_now() -> float:
    return time.time()
