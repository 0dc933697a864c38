"""A ready chain for the devnet and tests: embedded chain, contracts, genesis checkers.

``start_embedded`` is the devnet's whole chain setup: deploy everything from the first
dev account, fund each genesis checker's operator, mint it a license, register its node
key with its stake, and fill the reward pool. The chain is the source of truth for the
checker set from then on (DESIGN section 7: static lists only as genesis data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node.chain.api import KaisarChain
from node.chain.client import ChainClient
from node.chain.deploy import Deployment, DeployParams, deploy_all
from node.chain.embedded import EmbeddedChain
from node.identity import Identity

ETHER = 10**18


@dataclass(frozen=True)
class GenesisChecker:
    operator: Identity  # pays the stake, owns the license (may be the node key itself)
    node_key: Identity  # signs votes; signs its consent to the binding at registration
    stake: int


@dataclass
class DevChain:
    client: ChainClient
    deployment: Deployment
    chain: KaisarChain
    faucet: Identity

    async def fund(self, address: str, amount: int = 100 * ETHER) -> None:
        await self.client.fund(self.faucet, address, amount)


async def bootstrap(
    client: ChainClient,
    faucet: Identity,
    checkers: Sequence[GenesisChecker],
    *,
    params: DeployParams | None = None,
    reward_pool: int = 100 * ETHER,
    operator_funds: int = 100 * ETHER,
) -> DevChain:
    """Deploy from ``faucet`` and register ``checkers``; works on any dev chain."""
    dep = await deploy_all(client, faucet, params)
    kc = KaisarChain(client, dep)
    for c in checkers:
        await client.fund(faucet, c.operator.address, operator_funds + c.stake)
        token = await kc.mint_license(faucet, c.operator.address)
        await kc.register_checker(c.operator, token, c.node_key, c.stake)
    if reward_pool:
        await kc.fund_rewards(faucet, reward_pool)
    return DevChain(client, dep, kc, faucet)


async def start_embedded(
    checkers: Sequence[GenesisChecker],
    *,
    params: DeployParams | None = None,
    reward_pool: int = 100 * ETHER,
) -> DevChain:
    """A fresh in-process chain with the contracts and the genesis checker set."""
    embedded = EmbeddedChain()
    client = ChainClient.from_embedded(embedded)
    return await bootstrap(
        client, embedded.dev_accounts[0], checkers, params=params, reward_pool=reward_pool
    )
