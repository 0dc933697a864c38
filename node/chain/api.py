"""Typed access to the deployed Kaisar contracts: what nodes and the light client call.

``KaisarChain(client, deployment)`` is the one entry object. Reads return plain
dataclasses; writes take the signing ``Identity`` and return the receipt (or the id
they created). Quorum certificates are lists of 65-byte signatures, in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from web3.logs import DISCARD

from node.chain.client import ChainClient
from node.chain.compile import compile_all
from node.chain.deploy import Deployment
from node.eip712 import Domain, StructType, signing_digest
from node.identity import Identity

# Job.state values (Escrow.vy)
JOB_OPEN = 1
JOB_ASSIGNED = 2
JOB_CLOSED = 3
JOB_DONE = 4
JOB_FAILED = 5
JOB_EXPIRED = 6

MAX_CHECKERS = 64

# The node key's consent to be bound to an operator's license (Staking.register).
BIND_NODE_KEY = StructType("BindNodeKey", (("operator", "address"), ("tokenId", "uint256")))


def bind_node_key_sig(domain: Domain, node_key: Identity, operator: str, token_id: int) -> bytes:
    digest = signing_digest(domain, BIND_NODE_KEY, {"operator": operator, "tokenId": token_id})
    return node_key.sign_digest(digest)


@dataclass(frozen=True)
class CheckerSet:
    node_keys: tuple[str, ...]
    stakes: tuple[int, ...]

    @property
    def total_stake(self) -> int:
        return sum(self.stakes)

    def stake_of(self, node_key: str) -> int:
        try:
            return self.stakes[self.node_keys.index(node_key)]
        except ValueError:
            return 0


@dataclass(frozen=True)
class Job:
    job_id: int
    owner: str
    spec_hash: bytes
    gpu_class: bytes
    count: int
    image: str
    port: int
    duration: int
    price: int  # wei per second
    state: int
    round: int
    provider: str
    started: int
    remaining: int
    paid_until: int
    deposit: int
    opened_at: int
    failures: int

    @property
    def exists(self) -> bool:
        return self.state != 0


class KaisarChain:
    @classmethod
    async def open(cls, rpc: str, deployment: Deployment | Path) -> KaisarChain:
        """Connect to ``rpc`` and check ``deployment`` (a record or a file) against it.

        Raises ChainUnavailable / DeploymentMismatch / UserError with a clear message.
        """
        from node.chain.deploy import load_deployment, verify_deployment

        dep = deployment if isinstance(deployment, Deployment) else load_deployment(deployment)
        client = await trio.to_thread.run_sync(ChainClient.connect, rpc)
        await verify_deployment(client, dep)
        return cls(client, dep)

    def __init__(self, client: ChainClient, deployment: Deployment) -> None:
        self.client = client
        self.deployment = deployment
        arts = compile_all()
        self.license = client.contract(deployment.license, arts["License"].abi)
        self.staking = client.contract(deployment.staking, arts["Staking"].abi)
        self.escrow = client.contract(deployment.escrow, arts["Escrow"].abi)
        self.rewards = client.contract(deployment.rewards, arts["Rewards"].abi)

    @property
    def domain(self) -> Domain:
        return self.deployment.domain

    def contracts(self) -> list[Any]:
        return [self.license, self.staking, self.escrow, self.rewards]

    # reads -------------------------------------------------------------------------

    async def active_checkers(self) -> CheckerSet:
        keys, stakes = await self.client.call(self.staking.functions.active_checkers())
        return CheckerSet(tuple(keys), tuple(int(s) for s in stakes))

    async def total_active_stake(self) -> int:
        return int(await self.client.call(self.staking.functions.total_active_stake()))

    async def get_job(self, job_id: int) -> Job:
        raw = await self.client.call(self.escrow.functions.jobs(job_id))
        return Job(job_id, *raw)

    async def job_and_checkers(self, job_id: int) -> tuple[Job, CheckerSet, int]:
        """The job, the active checker set and the block's timestamp, all read at the
        latest block, in one worker-thread hop (a provider's checks before a deploy)."""
        jobs, active = self.escrow.functions.jobs(job_id), self.staking.functions.active_checkers()

        def read() -> tuple[Job, CheckerSet, int]:
            block = self.client.w3.eth.get_block("latest")
            at = int(block["number"])
            raw = jobs.call(block_identifier=at)
            keys, stakes = active.call(block_identifier=at)
            return (
                Job(job_id, *raw),
                CheckerSet(tuple(keys), tuple(int(x) for x in stakes)),
                int(block["timestamp"]),
            )

        return await self.client.run(read)

    async def earned(self, job_id: int) -> int:
        return int(await self.client.call(self.escrow.functions.earned(job_id)))

    async def claimable_rewards(self, account: str) -> int:
        return int(await self.client.call(self.rewards.functions.claimable(account)))

    # license and staking ------------------------------------------------------------

    async def buy_license(self, who: Identity) -> int:
        price = await self.client.call(self.license.functions.price())
        receipt = await self.client.transact(who, self.license.functions.buy(), value=int(price))
        ev = self.license.events.Transfer().process_receipt(receipt, errors=DISCARD)
        return int(ev[0]["args"]["tokenId"])

    async def mint_license(self, admin: Identity, to: str) -> int:
        """Admin mints a license to ``to`` (devnet genesis); returns the token id."""
        receipt = await self.client.transact(admin, self.license.functions.admin_mint(to))
        ev = self.license.events.Transfer().process_receipt(receipt, errors=DISCARD)
        return int(ev[0]["args"]["tokenId"])

    async def register_checker(
        self,
        operator: Identity,
        token_id: int,
        node_key: Identity | str,
        stake: int,
        key_sig: bytes = b"",
    ) -> Any:
        """Approve the license for custody and register it with ``stake`` wei.

        ``node_key`` is the checker's signing identity (it signs its consent here) or
        its address together with ``key_sig`` from ``bind_node_key_sig``; no consent is
        needed when the operator is the node key.
        """
        if isinstance(node_key, Identity):
            if node_key.address != operator.address:
                key_sig = bind_node_key_sig(self.domain, node_key, operator.address, token_id)
            node_key = node_key.address
        await self.client.transact(
            operator, self.license.functions.approve(self.staking.address, token_id)
        )
        return await self.client.transact(
            operator, self.staking.functions.register(token_id, node_key, key_sig), value=stake
        )

    # jobs ----------------------------------------------------------------------------

    async def create_job(
        self,
        owner: Identity,
        *,
        spec_hash: bytes,
        gpu_class: bytes,
        count: int,
        image: str,
        port: int,
        duration: int,
        price_per_second: int,
    ) -> int:
        fn = self.escrow.functions.create_job(
            spec_hash, gpu_class, count, image, port, duration, price_per_second
        )
        receipt = await self.client.transact(owner, fn, value=duration * price_per_second)
        ev = self.escrow.events.JobCreated().process_receipt(receipt, errors=DISCARD)
        return int(ev[0]["args"]["job_id"])

    async def assign(
        self, sender: Identity, job_id: int, round_: int, provider: str, sigs: Sequence[bytes]
    ) -> Any:
        """Submit an AssignVote quorum certificate (the first valid one wins)."""
        fn = self.escrow.functions.assign(job_id, round_, provider, list(sigs))
        return await self.client.transact(sender, fn)

    async def fail(
        self, sender: Identity, job_id: int, round_: int, provider: str, sigs: Sequence[bytes]
    ) -> Any:
        """Submit a FailureVote quorum certificate: reassign the rest or refund."""
        fn = self.escrow.functions.fail(job_id, round_, provider, list(sigs))
        return await self.client.transact(sender, fn)

    async def close_job(self, owner: Identity, job_id: int) -> Any:
        return await self.client.transact(owner, self.escrow.functions.close(job_id))

    async def claim_job(self, provider: Identity, job_id: int) -> Any:
        return await self.client.transact(provider, self.escrow.functions.claim(job_id))

    async def expire_job(self, sender: Identity, job_id: int) -> Any:
        return await self.client.transact(sender, self.escrow.functions.expire(job_id))

    async def withdraw_escrow(self, who: Identity) -> Any:
        return await self.client.transact(who, self.escrow.functions.withdraw())

    # rewards ---------------------------------------------------------------------------

    async def submit_popw(
        self, sender: Identity, epoch: int, provider: str, gpu_class: bytes, sigs: Sequence[bytes]
    ) -> Any:
        fn = self.rewards.functions.submit_popw(epoch, provider, gpu_class, list(sigs))
        return await self.client.transact(sender, fn)

    async def fund_rewards(self, sender: Identity, amount: int) -> Any:
        return await self.client.transact(sender, self.rewards.functions.fund(), value=amount)

    async def claim_rewards(self, who: Identity) -> Any:
        return await self.client.transact(who, self.rewards.functions.claim())
