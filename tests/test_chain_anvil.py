"""Against a real JSON-RPC node: anvil (npm @foundry-rs/anvil, scripts/install-anvil.sh).

Skipped only when anvil is not installed; CI installs it.
"""

import json

import pytest
import trio

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import (  # noqa: E402
    ANVIL_KEY,
    ETHER,
    GPU,
    PARAMS,
    PASSWORD,
    STAKES,
    ident,
    keystore,
    one_error,
    run,
)

from node.chain.api import JOB_ASSIGNED, KaisarChain  # noqa: E402
from node.chain.client import ChainClient  # noqa: E402
from node.chain.deploy import Deployment, deploy_all, verify_deployment  # noqa: E402
from node.chain.errors import ChainError, ChainRevert, DeploymentMismatch  # noqa: E402
from node.chain.watcher import EventWatcher  # noqa: E402
from node.consensus import votes  # noqa: E402
from node.identity import Identity  # noqa: E402

pytest_plugins = ["chain_fixtures"]
pytestmark = pytest.mark.anvil
FAUCET = Identity.from_hex(ANVIL_KEY)


def _fund(url, address, amount=100 * ETHER):
    client = ChainClient.connect(url)
    trio.run(client.fund, FAUCET, address, amount)


def test_cli_deploy_and_check(anvil, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KAISAR_PASSWORD", PASSWORD)
    who, key = keystore(tmp_path)
    _fund(anvil, who.address)
    out = tmp_path / "deployment.json"
    rc, stdout, err = run(
        capsys, "chain", "deploy", "--rpc", anvil, "--key", str(key), "--out", str(out), "--json"
    )
    assert rc == 0, err
    dep = Deployment.from_json(out.read_text())
    assert dep.chain_id == 31337 and dep.deployer == who.address
    assert json.loads(stdout)["staking"] == dep.staking
    rc, stdout, err = run(capsys, "chain", "check", "--rpc", anvil, "--deployment", str(out))
    assert rc == 0 and "matches" in stdout, err
    # the same file against a chain it does not describe
    moved = tmp_path / "moved.json"
    moved.write_text(Deployment(**{**dep.__dict__, "license": who.address}).to_json())
    rc, _, err = run(capsys, "chain", "check", "--rpc", anvil, "--deployment", str(moved))
    one_error(rc, err, "no License contract")
    other = tmp_path / "other.json"
    other.write_text(Deployment(**{**dep.__dict__, "chain_id": 5}).to_json())
    rc, _, err = run(capsys, "chain", "check", "--rpc", anvil, "--deployment", str(other))
    one_error(rc, err, "deployment is for chain id 5")


def test_cli_bad_inputs_on_anvil(anvil, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KAISAR_PASSWORD", PASSWORD)
    poor, key = keystore(tmp_path, "poor")
    rc, _, err = run(capsys, "chain", "deploy", "--rpc", anvil, "--key", str(key))
    one_error(rc, err, "has 0 wei")
    rc, _, err = run(
        capsys, "chain", "deploy", "--rpc", anvil, "--key", str(key), "--chain-id", "1"
    )
    one_error(rc, err, "is chain id 31337, not 1")
    _fund(anvil, poor.address)
    rc, _, err = run(
        capsys, "chain", "deploy", "--rpc", anvil, "--key", str(key), "--slash-bps", "20000"
    )
    one_error(rc, err, "bps > 10000")


async def test_protocol_on_anvil(anvil):
    client = ChainClient.connect(anvil)
    admin = FAUCET
    dep = await deploy_all(client, admin, PARAMS)
    await verify_deployment(client, dep)
    kc = KaisarChain(client, dep)
    checkers = [ident(f"anvil-checker{i}") for i in range(4)]
    operators = [ident(f"anvil-operator{i}") for i in range(4)]
    owner, prov = ident("anvil-owner"), ident("anvil-provider")
    for who in (*operators, owner, prov):
        await client.fund(admin, who.address, 20 * ETHER)
    for op, key, stake in zip(operators, checkers, STAKES, strict=True):
        token = await kc.buy_license(op)
        await kc.register_checker(op, token, key, stake)
    assert (await kc.active_checkers()).total_stake == sum(STAKES)

    watcher = EventWatcher(client, kc.contracts(), from_block=dep.block, confirmations=1)
    job_id = await kc.create_job(
        owner,
        spec_hash=b"\1" * 32,
        gpu_class=GPU,
        count=1,
        image="img",
        port=80,
        duration=100,
        price_per_second=10**9,
    )
    d = votes.assign_digest(kc.domain, job_id, 0, prov.address)
    weak = [votes.sign(c, d) for c in checkers[1:]]
    with pytest.raises(ChainRevert, match="insufficient quorum"):
        await kc.assign(owner, job_id, 0, prov.address, weak)
    await kc.assign(owner, job_id, 0, prov.address, [votes.sign(c, d) for c in checkers[:2]])
    assert (await kc.get_job(job_id)).state == JOB_ASSIGNED
    await client.increase_time(50)
    await kc.claim_job(prov, job_id)
    names = [e.name for e in await watcher.poll()]
    assert "JobCreated" in names and "JobAssigned" in names and names.count("Registered") == 4
    assert await watcher.poll() == []
    # a transaction mined with a fixed gas limit: the reason comes from a replay
    with pytest.raises(ChainRevert, match="wrong price"):
        await client.transact(owner, kc.license.functions.buy(), value=1, gas=200_000)
    wrong = Deployment(**{**dep.__dict__, "chain_id": 1})
    with pytest.raises(DeploymentMismatch):
        await verify_deployment(client, wrong)


async def test_dropped_transaction_is_rebroadcast(anvil):
    client = ChainClient.connect(anvil)
    rpc = client.w3.provider.make_request
    sender = client.sender(FAUCET)
    sender.resend_after = 0.3
    target = ident("drop-target").address
    await client.run(rpc, "evm_setAutomine", [False])
    async with trio.open_nursery() as nursery:
        result = {}

        async def send():
            result["receipt"] = await client.send_value(FAUCET, target, 12345)

        nursery.start_soon(send)
        with trio.fail_after(10):  # wait until it sits in the pool, then drop it
            while (await client.run(rpc, "txpool_status", []))["result"]["pending"] in (0, "0x0"):
                await trio.sleep(0.02)
        await client.run(rpc, "anvil_dropAllTransactions", [])
        await client.run(rpc, "evm_setAutomine", [True])
    assert result["receipt"]["status"] == 1 and sender.resends >= 1
    assert await client.balance(target) == 12345


async def test_receipt_timeout_is_a_clear_error(anvil):
    client = ChainClient.connect(anvil)
    await client.run(client.w3.provider.make_request, "evm_setAutomine", [False])
    sender = client.sender(FAUCET)
    sender.receipt_timeout = 0.5
    with pytest.raises(ChainError, match="is the node mining"):
        await client.send_value(FAUCET, ident("never").address, 1)


async def test_open_checks_the_deployment(anvil, tmp_path):
    client = ChainClient.connect(anvil)
    dep = await deploy_all(client, FAUCET, PARAMS)
    path = tmp_path / "d.json"
    dep.save(path)
    kc = await KaisarChain.open(anvil, path)
    assert (await kc.active_checkers()).node_keys == ()
    with pytest.raises(DeploymentMismatch, match="chain id"):
        await KaisarChain.open(anvil, Deployment(**{**dep.__dict__, "chain_id": 9}))


CLOCK_SOURCE = """
@external
def after(t: uint256):
    assert block.timestamp >= t, "too early"
"""


async def test_time_checks_run_at_the_next_blocks_time_on_an_idle_chain(anvil):
    """anvil mines only on demand, so after an idle spell the latest block is old. A
    transaction whose guard depends on time (Escrow.expire after the paid time) must be
    estimated for the block it goes into: estimated on "latest" it reverted "job still
    running" for as long as nothing else mined (the soak's job 75)."""
    from node.chain.compile import compile_source

    client = ChainClient.connect(anvil)
    art = compile_source("Clock", CLOCK_SOURCE)
    clock = client.contract(await client.deploy(FAUCET, art.abi, art.bytecode), art.abi)
    latest = (await client.run(client.w3.eth.get_block, "latest"))["timestamp"]
    await trio.sleep(2.2)  # idle: no block is mined meanwhile
    assert (await client.run(client.w3.eth.get_block, "latest"))["timestamp"] == latest
    receipt = await client.transact(FAUCET, clock.functions.after(latest + 2))
    assert receipt["status"] == 1
    with pytest.raises(ChainRevert, match="too early"):  # the guard still guards
        await client.transact(FAUCET, clock.functions.after(latest + 3600))
