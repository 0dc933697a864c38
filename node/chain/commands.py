"""`kaisar chain ...`: deploy the contracts, check a deployment file against a chain.

Both commands fail with one clear line (UserError, exit 2) for an unreachable RPC, a
wrong chain id, an account without funds, a reverted transaction or a deployment file
that does not match the chain. Deploy checks funds for the whole deployment before
sending anything and writes the deployment file only after every contract exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import trio

from node.chain.client import EMBEDDED, ChainClient
from node.chain.compile import compile_all
from node.chain.deploy import DeployParams, deploy_all, load_deployment, verify_deployment
from node.chain.errors import ChainError, InsufficientFunds
from node.errors import UserError
from node.identity import Identity, IdentityError, load_keystore, read_password


def register(subparsers: argparse._SubParsersAction) -> None:
    chain = subparsers.add_parser("chain", help="deploy and check the Kaisar contracts")
    sub = chain.add_subparsers(dest="chain_cmd", metavar="CMD")
    chain.set_defaults(func=lambda args: (chain.print_help(sys.stderr), 2)[1])

    dep = sub.add_parser("deploy", help="deploy License, Staking, Escrow, Rewards")
    dep.add_argument(
        "--rpc", required=True, help="JSON-RPC URL, or 'embedded' (in-process, throwaway)"
    )
    dep.add_argument("--key", type=Path, help="deployer keystore (password from $KAISAR_PASSWORD)")
    dep.add_argument("--out", type=Path, help="write the deployment file here")
    dep.add_argument("--json", action="store_true", help="print the deployment as JSON")
    dep.add_argument(
        "--chain-id", type=int, help="refuse to deploy unless the RPC has this chain id"
    )
    defaults = DeployParams()
    for name in (
        "license_price",
        "license_supply",
        "min_stake",
        "unbonding_period",
        "slash_bps",
        "reporter_bps",
        "assign_timeout",
        "min_reassign",
        "reward_per_cert",
        "checker_bps",
        "unlock_period",
    ):
        dep.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=getattr(defaults, name),
            metavar="N",
            help=f"constructor parameter (default {getattr(defaults, name)})",
        )
    dep.set_defaults(func=cmd_deploy)

    chk = sub.add_parser("check", help="check a deployment file against a chain")
    chk.add_argument("--rpc", required=True, help="JSON-RPC URL")
    chk.add_argument("--deployment", type=Path, required=True)
    chk.set_defaults(func=cmd_check)


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    b = bench_subparsers.add_parser("chain-gas", help="gas used per contract function (JSON)")
    b.set_defaults(func=cmd_bench_gas)


def cmd_bench_gas(args: argparse.Namespace) -> int:
    from node.chain.gasreport import json_report

    print(json_report())
    return 0


def _load_key(path: Path) -> Identity:
    try:
        return load_keystore(path, read_password())
    except IdentityError as exc:
        raise UserError(str(exc)) from None


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.rpc != EMBEDDED and args.key is None:
        raise UserError("--key is required with a JSON-RPC chain")
    if args.out is not None and args.out.exists():
        raise UserError(f"{args.out} exists; refusing to overwrite a deployment file")
    if args.out is not None and not args.out.parent.exists():
        raise UserError(f"directory {args.out.parent} does not exist")
    deployer = _load_key(args.key) if args.key else None
    params = DeployParams(
        **{f: getattr(args, f) for f in DeployParams.__dataclass_fields__}  # type: ignore[attr-defined]
    )
    client = ChainClient.connect(args.rpc)
    if args.chain_id is not None and client.chain_id != args.chain_id:
        raise ChainError(
            f"{args.rpc} is chain id {client.chain_id}, not {args.chain_id} (--chain-id)"
        )
    deployment = trio.run(_deploy, client, deployer, params)
    text = deployment.to_json()
    if args.out is not None:
        _write_atomic(args.out, text + "\n")
    if args.json:
        print(text)
    else:
        where = f" -> {args.out}" if args.out else ""
        print(f"deployed on chain {deployment.chain_id} at block {deployment.block}{where}")
        for name, addr in deployment.addresses().items():
            print(f"  {name:8} {addr}")
        if args.rpc == EMBEDDED:
            print("  (embedded chain: gone when this process exits)")
    return 0


async def _deploy(client: ChainClient, deployer: Identity | None, params: DeployParams):
    if deployer is None:  # embedded chain: a funded dev account deploys
        assert client.embedded is not None
        deployer = client.embedded.dev_accounts[0]
    elif client.embedded is not None:
        await client.fund(client.embedded.dev_accounts[0], deployer.address, 10**21)
    await check_deploy_funds(client, deployer, params)
    return await deploy_all(client, deployer, params)


async def check_deploy_funds(client: ChainClient, deployer: Identity, params: DeployParams) -> None:
    """Estimate every constructor first, so a deploy fails before its first transaction.

    Also surfaces constructor reverts (bad parameters) before anything is sent.
    """
    arts = compile_all()
    w3 = client.w3
    placeholder = deployer.address
    ctor_args = {
        "License": (params.license_price, params.license_supply),
        "Staking": (
            placeholder,
            params.min_stake,
            params.unbonding_period,
            params.slash_bps,
            params.reporter_bps,
        ),
        "Escrow": (placeholder, params.assign_timeout, params.min_reassign),
        "Rewards": (placeholder, params.reward_per_cert, params.checker_bps, params.unlock_period),
    }
    gas = 0
    for name, a in arts.items():
        ctor = w3.eth.contract(abi=a.abi, bytecode=a.bytecode).constructor(*ctor_args[name])
        gas += int(await client.run(ctor.estimate_gas, {"from": deployer.address}))
    block = await client.get_block("latest")
    fee = int(block.get("baseFeePerGas") or await client.run(lambda: w3.eth.gas_price)) * 2 + 10**9
    need = int(gas * 1.25) * fee
    have = await client.balance(deployer.address)
    if have < need:
        raise InsufficientFunds(
            f"deployer {deployer.address} has {have} wei but deploying needs about {need} wei: fund it first"
        )


def cmd_check(args: argparse.Namespace) -> int:
    deployment = load_deployment(args.deployment)
    if args.rpc == EMBEDDED:
        raise UserError("an embedded chain lives in one process: check a JSON-RPC chain")
    client = ChainClient.connect(args.rpc)
    trio.run(verify_deployment, client, deployment)
    print(f"ok: {args.deployment} matches chain {deployment.chain_id} at {args.rpc}")
    return 0


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".deploy-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


__all__ = ["register", "register_bench", "cmd_deploy", "cmd_check", "check_deploy_funds"]
