"""Gas used by every state-changing contract function, measured on the embedded chain.

``python -m node.chain.gasreport`` prints the markdown table of docs/CONTRACTS.md;
``kaisar bench chain-gas`` prints the same numbers as JSON. The scenario uses four
checkers, so quorum functions verify two or four signatures as noted.
"""

from __future__ import annotations

import json

from web3.logs import DISCARD

from node.chain.api import KaisarChain, bind_node_key_sig
from node.chain.client import ChainClient
from node.chain.deploy import DeployParams, deploy_all
from node.chain.embedded import EmbeddedChain
from node.consensus import votes
from node.identity import Identity

ETHER = 10**18


def _id(label: str) -> Identity:
    from eth_utils import keccak

    return Identity(keccak(label.encode()))


async def measure() -> dict[str, int]:
    chain = EmbeddedChain()
    client = ChainClient.from_embedded(chain)
    faucet = chain.dev_accounts[0]
    gas: dict[str, int] = {}

    async def tx(key: str, who: Identity, fn, value: int = 0):
        r = await client.transact(who, fn, value=value)
        gas[key] = int(r["gasUsed"])
        return r

    params = DeployParams(unbonding_period=10, unlock_period=100, reward_per_cert=ETHER)
    dep = await deploy_all(client, faucet, params)
    kc = KaisarChain(client, dep)
    L, S, E, R = kc.license, kc.staking, kc.escrow, kc.rewards
    ops = [_id(f"op{i}") for i in range(4)]
    keys = [_id(f"key{i}") for i in range(4)]
    owner, prov, other = _id("owner"), _id("prov"), _id("other")
    for who in (*ops, owner, prov, other):
        await client.fund(faucet, who.address, 100 * ETHER)

    # License
    await tx("License.set_price", faucet, L.functions.set_price(params.license_price))
    await tx("License.admin_mint", faucet, L.functions.admin_mint(other.address))
    tokens = []
    for i, op in enumerate(ops):
        r = await tx("License.buy", op, L.functions.buy(), params.license_price)
        tokens.append(L.events.Transfer().process_receipt(r, errors=DISCARD)[0]["args"]["tokenId"])
        await tx("License.approve", op, L.functions.approve(dep.staking, tokens[i]))
    await tx("License.setApprovalForAll", other, L.functions.setApprovalForAll(owner.address, True))
    await tx(
        "License.transferFrom", owner, L.functions.transferFrom(other.address, owner.address, 1)
    )
    await tx(
        "License.safeTransferFrom",
        owner,
        L.functions.safeTransferFrom(owner.address, other.address, 1, b""),
    )
    await tx("License.withdraw", faucet, L.functions.withdraw(faucet.address))

    # Staking
    stakes = (4 * ETHER, 3 * ETHER, 2 * ETHER, 1 * ETHER)
    for op, key, tok, st in zip(ops, keys, tokens, stakes, strict=True):
        sig = bind_node_key_sig(dep.domain, key, op.address, tok)
        await tx("Staking.register", op, S.functions.register(tok, key.address, sig), st)
    await tx("Staking.stake", ops[3], S.functions.stake(keys[3].address), ETHER)
    await tx("Staking.unstake", ops[3], S.functions.unstake(keys[3].address, ETHER))
    await client.increase_time(20)
    await tx("Staking.withdraw", ops[3], S.functions.withdraw(keys[3].address))

    # Escrow
    d = dep.domain
    r = await tx(
        "Escrow.create_job",
        owner,
        E.functions.create_job(b"\1" * 32, votes.gpu_class_id("cpu"), 1, "busybox", 80, 100, 10**9),
        100 * 10**9,
    )
    job = E.events.JobCreated().process_receipt(r, errors=DISCARD)[0]["args"]["job_id"]

    def qc(digest: bytes, n: int) -> list[bytes]:
        return [votes.sign(k, digest) for k in keys[:n]]

    await tx("Escrow.extend", owner, E.functions.extend(job, 10), 10 * 10**9)
    await tx(
        "Escrow.assign (2 sigs)",
        other,
        E.functions.assign(
            job, 0, prov.address, qc(votes.assign_digest(d, job, 0, prov.address), 2)
        ),
    )
    await client.increase_time(10)
    await tx("Escrow.claim", prov, E.functions.claim(job))
    await tx(
        "Escrow.fail (4 sigs, reassign)",
        other,
        E.functions.fail(
            job, 0, prov.address, qc(votes.failure_digest(d, job, 0, prov.address), 4)
        ),
    )
    await tx(
        "Escrow.assign (4 sigs)",
        other,
        E.functions.assign(
            job, 1, prov.address, qc(votes.assign_digest(d, job, 1, prov.address), 4)
        ),
    )
    await client.increase_time(10)
    await tx("Escrow.close", owner, E.functions.close(job))
    await tx("Escrow.withdraw", prov, E.functions.withdraw())
    r = await client.transact(
        owner,
        E.functions.create_job(b"\1" * 32, votes.gpu_class_id("cpu"), 1, "busybox", 80, 10, 10**9),
        value=10 * 10**9,
    )
    job2 = E.events.JobCreated().process_receipt(r, errors=DISCARD)[0]["args"]["job_id"]
    await client.increase_time(params.assign_timeout)
    await tx("Escrow.expire", other, E.functions.expire(job2))

    # Rewards
    await tx("Rewards.fund", faucet, R.functions.fund(), 10 * ETHER)
    cpu = votes.gpu_class_id("cpu")
    for n, epoch in ((2, 1), (4, 2)):
        sigs = qc(votes.popw_digest(d, epoch, prov.address, votes.VERDICT_PASS, cpu), n)
        await tx(
            f"Rewards.submit_popw ({n} sigs)",
            other,
            R.functions.submit_popw(epoch, prov.address, cpu, sigs),
        )
    await client.increase_time(50)
    await tx("Rewards.claim", prov, R.functions.claim())

    # Slashing (last: it changes the checker set)
    p2 = other.address
    a = votes.sign(keys[0], votes.assign_digest(d, 9, 0, prov.address))
    b = votes.sign(keys[0], votes.assign_digest(d, 9, 0, p2))
    await tx("Staking.slash_assign", other, S.functions.slash_assign(9, 0, prov.address, a, p2, b))
    a = votes.sign(keys[1], votes.popw_digest(d, 5, prov.address, 1, cpu))
    b = votes.sign(keys[1], votes.popw_digest(d, 5, prov.address, 2, cpu))
    await tx(
        "Staking.slash_popw", other, S.functions.slash_popw(5, prov.address, 1, cpu, a, 2, cpu, b)
    )
    await tx("Staking.withdraw_slashed", faucet, S.functions.withdraw_slashed(faucet.address))
    await tx("Staking.unregister", ops[2], S.functions.unregister(keys[2].address))
    return gas


def markdown(gas: dict[str, int]) -> str:
    lines = ["| function | gas used |", "|---|---:|"]
    lines += [f"| `{k}` | {v:,} |" for k, v in sorted(gas.items())]
    return "\n".join(lines)


def main() -> None:
    import trio

    print(markdown(trio.run(measure)))


def json_report() -> str:
    import trio

    return json.dumps(trio.run(measure), indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
