"""Deploy the four contracts and describe them in a deployment file nodes can trust.

A deployment file is JSON: chain id, block, deployer, the four addresses, the
constructor parameters and the sha256 of each contract source. ``load_deployment``
reads one and ``verify_deployment`` checks it against the chain it is used with
(same chain id, code at every address), so a node never talks to the wrong contracts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from web3 import Web3

from node.chain.client import ChainClient
from node.chain.compile import compile_all
from node.chain.errors import DeploymentMismatch
from node.eip712 import Domain
from node.errors import UserError
from node.identity import Identity

ETHER = 10**18
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DeployParams:
    """Constructor parameters; the defaults suit a devnet."""

    license_price: int = ETHER // 10
    license_supply: int = 1000
    min_stake: int = ETHER
    unbonding_period: int = 7 * 24 * 3600
    slash_bps: int = 5000  # half of the stake at risk
    reporter_bps: int = 1000  # a tenth of the cut to whoever reports
    assign_timeout: int = 3600
    min_reassign: int = 60  # Escrow: a failure with less paid time left refunds, not reassigns
    reward_per_cert: int = ETHER // 100
    checker_bps: int = 2000  # a fifth of each certificate's reward to its signers
    unlock_period: int = 30 * 24 * 3600


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    block: int  # first block holding the contracts: event watchers start here
    deployer: str
    license: str
    staking: str
    escrow: str
    rewards: str
    source_hashes: dict[str, str] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)

    @property
    def domain(self) -> Domain:
        """EIP-712 domain of every vote: this chain, the Staking contract."""
        return Domain(self.chain_id, self.staking)

    def addresses(self) -> dict[str, str]:
        return {
            "License": self.license,
            "Staking": self.staking,
            "Escrow": self.escrow,
            "Rewards": self.rewards,
        }

    def to_json(self) -> str:
        return json.dumps({"version": FORMAT_VERSION, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, origin: str = "deployment") -> Deployment:
        try:
            blob = json.loads(text)
            if not isinstance(blob, dict) or blob.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {blob.get('version')!r}")
            return cls(
                chain_id=int(blob["chain_id"]),
                block=int(blob["block"]),
                deployer=Web3.to_checksum_address(blob["deployer"]),
                license=Web3.to_checksum_address(blob["license"]),
                staking=Web3.to_checksum_address(blob["staking"]),
                escrow=Web3.to_checksum_address(blob["escrow"]),
                rewards=Web3.to_checksum_address(blob["rewards"]),
                source_hashes=dict(blob.get("source_hashes", {})),
                params={k: int(v) for k, v in blob.get("params", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{origin} is not a Kaisar deployment file: {exc}") from None

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def load_deployment(path: Path) -> Deployment:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"deployment file {path} not found (run 'kaisar chain deploy')") from None
    except OSError as exc:
        raise UserError(f"cannot read deployment file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"deployment file {path} is not UTF-8 JSON") from None
    return Deployment.from_json(text, origin=str(path))


async def verify_deployment(client: ChainClient, deployment: Deployment) -> None:
    """Raise DeploymentMismatch unless ``deployment`` describes the chain behind ``client``."""
    chain_id = await client.run(lambda: int(client.w3.eth.chain_id))
    if chain_id != deployment.chain_id:
        raise DeploymentMismatch(
            f"deployment is for chain id {deployment.chain_id} but {client.url} is chain id "
            f"{chain_id}: use the deployment file of this chain or run 'kaisar chain deploy'"
        )
    for name, address in deployment.addresses().items():
        if not await client.code_at(address):
            raise DeploymentMismatch(
                f"no {name} contract at {address} on {client.url}: the deployment file does not "
                "match this chain (was it reset?); redeploy with 'kaisar chain deploy'"
            )


async def deploy_all(
    client: ChainClient, deployer: Identity, params: DeployParams | None = None
) -> Deployment:
    """Deploy License, Staking, Escrow and Rewards from ``deployer``; returns the record."""
    p = params or DeployParams()
    arts = compile_all()
    lic = arts["License"]
    license_addr = await client.deploy(
        deployer, lic.abi, lic.bytecode, p.license_price, p.license_supply
    )
    first_block = await client.block_number()
    st = arts["Staking"]
    staking = await client.deploy(
        deployer,
        st.abi,
        st.bytecode,
        license_addr,
        p.min_stake,
        p.unbonding_period,
        p.slash_bps,
        p.reporter_bps,
    )
    es = arts["Escrow"]
    escrow = await client.deploy(
        deployer, es.abi, es.bytecode, staking, p.assign_timeout, p.min_reassign
    )
    rw = arts["Rewards"]
    rewards = await client.deploy(
        deployer, rw.abi, rw.bytecode, staking, p.reward_per_cert, p.checker_bps, p.unlock_period
    )
    return Deployment(
        chain_id=client.chain_id,
        block=first_block,
        deployer=deployer.address,
        license=license_addr,
        staking=staking,
        escrow=escrow,
        rewards=rewards,
        source_hashes={name: a.source_hash for name, a in arts.items()},
        params=asdict(p),
    )
