"""Shared pieces of the checker tests: a fast class table, honest container-less providers."""

from __future__ import annotations

import trio

from node.consensus.checkers import make_checker_set
from node.popw.backends import best_backend
from node.popw.classes import parse_table
from node.popw.protocol import respond_popw
from node.popw.prover import Prover
from node.roles.checker.service import CheckerSettings
from node.roles.provider import messages as pmsg
from node.roles.provider.deploy import MAX_REQUEST_BYTES, DeployRefused, check_deploy, decode_deploy

# A "cpu" class small enough that a challenge takes milliseconds (the real table's takes ~2 s).
FAST_CLASSES = parse_table(
    {
        "popw": {
            "target_seconds": 0.01,
            "min_efficiency": 0.05,
            "network_allowance_seconds": 1.0,
            "openings": 4,
        },
        "classes": {"cpu": {"tflops": 0.0001, "memory_gb": 1, "n": 64, "stride": 1}},
    }
)

FAST = CheckerSettings(
    epoch_seconds=3600, round_timeout=1.0, popw_retry=0.3, status_timeout=30.0,
    submit_backoff=0.5, chain_poll=0.1,
)  # fmt: skip


class HonestProvider:
    """The real provider protocol functions (ads, PoPW responder, deploy rule) without containers.

    Used by the 10-job network test only, where docker would dominate the run time.
    """

    def __init__(self, host, chain, free: int = 100, price: int = 10**12) -> None:
        self.host, self.chain, self.free, self.price = host, chain, free, price
        self.deployed: dict[int, dict] = {}
        self.prover = Prover(best_backend())
        self.refuse = ""  # set: refuse every deploy with this reason
        self.answer_delay = 0.0  # seconds between the checks and the answer (slow checks)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.host.set_handler("/kaisar/popw/1", lambda f, p: respond_popw(f, self.prover))
        self.host.set_handler("/kaisar/deploy/1", self._on_deploy)
        task_status.started()
        while True:
            env = self.host.sign(
                "ProviderAd",
                {
                    "peer": self.host.peer_id.to_base58(), "addrs": self.host.addrs()[:4],
                    "gpu_class": "cpu", "price_per_gpu_hour_wei": self.price,
                    "gpus_total": self.free, "gpus_free": self.free - len(self.deployed),
                    "accepting": True, "inventory": {},
                },
                ttl_ms=5000,
            )  # fmt: skip
            try:
                await self.host.publish(pmsg.AD_TOPIC, env)
            except Exception:
                pass
            await trio.sleep(0.3)

    async def _on_deploy(self, framed, peer) -> None:
        obj = await framed.recv(max_size=MAX_REQUEST_BYTES, timeout=10.0)
        try:
            req = decode_deploy(obj)
            job = await self.chain.get_job(req.job_id)
            cs = await self.chain.active_checkers()
            checkers = make_checker_set(zip(cs.node_keys, cs.stakes, strict=True))
            check_deploy(req, self.host.address, job, checkers, self.chain.domain)
            if self.refuse:
                raise DeployRefused(self.refuse)
        except DeployRefused as exc:
            await framed.send({"t": "refused", "job_id": obj.get("job_id"), "reason": exc.reason})
            return
        entry = self.deployed.setdefault(
            req.job_id, {"round": req.round, "count": 0, "chain_state": job.state}
        )
        entry["count"] += 1
        if self.answer_delay:
            await trio.sleep(self.answer_delay)
        entry["state_at_answer"] = (await self.chain.get_job(req.job_id)).state
        await framed.send(
            {
                "t": "deployed",
                "job_id": req.job_id,
                "qc_digest": b"\x00" * 32,
                "container_port": job.port,
                "state": "running",
                "peer": "",
            }
        )
