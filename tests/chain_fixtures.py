"""Chain test fixtures (imported by tests/test_chain_*.py through ``pytest_plugins``).

One embedded chain per session with the contracts deployed and four checkers of
unequal stake registered; every test runs on a snapshot that is reverted afterwards,
so tests are independent and the contracts are compiled and deployed once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from eth_account import Account
from eth_utils import keccak
from web3 import Web3
from web3.logs import DISCARD

from node.chain.api import KaisarChain, bind_node_key_sig
from node.chain.client import ChainClient
from node.chain.compile import compile_contract, compile_source
from node.chain.deploy import Deployment, DeployParams, deploy_all
from node.chain.embedded import EmbeddedChain
from node.chain.errors import ChainRevert
from node.consensus import votes
from node.identity import Identity

ETHER = 10**18
STAKES = (4 * ETHER, 3 * ETHER, 2 * ETHER, 1 * ETHER)  # total 10: quorum needs >= 6.67
PARAMS = DeployParams(
    license_price=ETHER // 10,
    license_supply=20,
    min_stake=ETHER,
    unbonding_period=1000,
    slash_bps=5000,
    reporter_bps=1000,
    assign_timeout=600,
    min_reassign=60,
    reward_per_cert=ETHER,
    checker_bps=2000,
    unlock_period=1000,
)
GPU = votes.gpu_class_id("cpu")
ROOT = Path(__file__).resolve().parent.parent
ANVIL = ROOT / ".tools" / "node_modules" / ".bin" / "anvil"


def ident(label: str) -> Identity:
    return Identity(keccak(label.encode()))


class Harness:
    """Synchronous transactions for contract tests (signed locally, eth-tester mined)."""

    def __init__(self, chain: EmbeddedChain) -> None:
        self.chain = chain
        self.w3 = chain.w3
        self.client = ChainClient.from_embedded(chain)

    def tx(self, who: Identity, fn, value: int = 0, gas: int | None = None):
        base = {
            "from": who.address,
            "value": value,
            "nonce": self.w3.eth.get_transaction_count(who.address),
        }
        try:
            if gas is None and hasattr(fn, "call"):
                # One execution surfaces the revert reason; a fixed limit then skips
                # eth-tester's estimate, a binary search that re-runs the call ~20 times.
                fn.call({"from": who.address, "value": value})
                gas = 3_000_000
            if gas is not None:
                base["gas"] = gas
            tx = fn.build_transaction(base)
        except Exception as exc:  # TransactionFailed from eth-tester at estimate time
            from node.chain.client import revert_reason

            reason = revert_reason(exc)
            if reason is None:
                raise
            raise ChainRevert(reason) from None
        raw = Account.from_key(who.secret).sign_transaction(tx).raw_transaction
        receipt = self.w3.eth.get_transaction_receipt(self.w3.eth.send_raw_transaction(raw))
        if receipt["status"] != 1:
            raise ChainRevert("reverted (mined)")
        return receipt

    def call(self, fn):
        return self.client.run_sync(fn.call)

    def balance(self, addr: str) -> int:
        return self.w3.eth.get_balance(addr)

    def now(self) -> int:
        return self.chain.timestamp()

    def fee(self, receipt) -> int:
        return receipt["gasUsed"] * receipt["effectiveGasPrice"]

    def deploy(self, who: Identity, name: str, *args) -> str:
        art = _artifact(name)
        ctor = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode).constructor(*args)
        return self.tx(who, ctor)["contractAddress"]

    def contract(self, name: str, address: str):
        return self.w3.eth.contract(address=address, abi=_artifact(name).abi)


def _artifact(name: str):
    if name in TEST_SOURCES:
        return compile_source(name, TEST_SOURCES[name])
    return compile_contract(name)


@contextlib.contextmanager
def reverts(reason: str):
    with pytest.raises(ChainRevert) as info:
        yield info
    assert reason in info.value.reason, info.value.reason


@dataclass
class World:
    chain: EmbeddedChain
    h: Harness
    dep: Deployment
    kc: KaisarChain
    admin: Identity
    operators: list[Identity]
    checkers: list[Identity]
    owner: Identity
    providers: list[Identity]
    outsider: Identity

    @property
    def license(self):
        return self.kc.license

    @property
    def staking(self):
        return self.kc.staking

    @property
    def escrow(self):
        return self.kc.escrow

    @property
    def rewards(self):
        return self.kc.rewards

    # votes -------------------------------------------------------------------

    def assign_sigs(self, job_id: int, round_: int, provider: str, signers, domain=None):
        d = votes.assign_digest(domain or self.dep.domain, job_id, round_, provider)
        return [votes.sign(s, d) for s in signers]

    def failure_sigs(self, job_id: int, round_: int, provider: str, signers, domain=None):
        d = votes.failure_digest(domain or self.dep.domain, job_id, round_, provider)
        return [votes.sign(s, d) for s in signers]

    def popw_sigs(self, epoch, provider, signers, verdict=votes.VERDICT_PASS, gpu=GPU, domain=None):
        d = votes.popw_digest(domain or self.dep.domain, epoch, provider, verdict, gpu)
        return [votes.sign(s, d) for s in signers]

    def create_job(self, duration=100, price=10**12, owner=None, **kw) -> int:
        owner = owner or self.owner
        args = dict(spec=b"\x11" * 32, gpu=GPU, count=1, image="busybox:latest", port=8080)
        args.update(kw)
        r = self.h.tx(
            owner,
            self.escrow.functions.create_job(
                args["spec"],
                args["gpu"],
                args["count"],
                args["image"],
                args["port"],
                duration,
                price,
            ),
            value=duration * price,
        )
        return self.escrow.events.JobCreated().process_receipt(r, errors=DISCARD)[0]["args"][
            "job_id"
        ]

    def assign(self, job_id, round_=0, provider=None, signers=None):
        provider = provider or self.providers[0].address
        signers = self.checkers[:2] if signers is None else signers
        sigs = self.assign_sigs(job_id, round_, provider, signers)
        return self.h.tx(
            self.outsider, self.escrow.functions.assign(job_id, round_, provider, sigs)
        )

    def job(self, job_id):
        return self.h.call(self.escrow.functions.jobs(job_id))


def _build_world() -> World:
    chain = EmbeddedChain()
    h = Harness(chain)
    admin = chain.dev_accounts[0]
    client = h.client
    dep = trio.run(deploy_all, client, admin, PARAMS)
    kc = KaisarChain(client, dep)
    operators = [ident(f"operator{i}") for i in range(4)]
    checkers = [ident(f"checker{i}") for i in range(4)]
    owner, outsider = ident("owner"), ident("outsider")
    providers = [ident(f"provider{i}") for i in range(2)]
    for i, who in enumerate([*operators, owner, outsider, *providers]):
        faucet = chain.dev_accounts[1 + i % 8]
        tx = {
            "from": faucet.address,
            "to": who.address,
            "value": 1000 * ETHER,
            "nonce": chain.w3.eth.get_transaction_count(faucet.address),
            "gas": 21000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "chainId": chain.w3.eth.chain_id,
        }
        chain.w3.eth.send_raw_transaction(
            Account.from_key(faucet.secret).sign_transaction(tx).raw_transaction
        )
    for op, key, stake in zip(operators, checkers, STAKES, strict=True):
        r = h.tx(op, kc.license.functions.buy(), value=PARAMS.license_price)
        token = kc.license.events.Transfer().process_receipt(r, errors=DISCARD)[0]["args"][
            "tokenId"
        ]
        h.tx(op, kc.license.functions.approve(dep.staking, token))
        sig = bind_node_key_sig(dep.domain, key, op.address, token)
        h.tx(op, kc.staking.functions.register(token, key.address, sig), value=stake)
    h.tx(admin, kc.rewards.functions.fund(), value=10 * ETHER)
    return World(chain, h, dep, kc, admin, operators, checkers, owner, providers, outsider)


@pytest.fixture(scope="session")
def world_session() -> World:
    return _build_world()


@pytest.fixture
def world(world_session: World):
    snap = world_session.chain.snapshot()
    try:
        yield world_session
    finally:
        world_session.chain.revert(snap)


# CLI helpers --------------------------------------------------------------------

PASSWORD = "test-password-123"


def keystore(tmp_path, label="deployer"):
    who = ident(label)
    path = tmp_path / f"{label}.json"
    path.write_text(json.dumps(Account.encrypt(who.secret, PASSWORD, kdf="pbkdf2", iterations=2)))
    return who, path


def run(capsys, *argv):
    import cli

    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(rc, err, text):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kaisar: error: "), err
    assert text in lines[0], lines[0]


# anvil --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def anvil_path() -> str | None:
    if ANVIL.exists():
        return str(ANVIL)
    return shutil.which("anvil")


# anvil's well-known first dev key (mnemonic "test test ... junk")
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


@pytest.fixture
def anvil():
    """A fresh anvil on 127.0.0.1 (free port); yields its URL, stops it afterwards."""
    path = anvil_path()
    if path is None:
        pytest.skip("anvil not installed: run scripts/install-anvil.sh")
    port = _free_port()
    proc = subprocess.Popen(
        [path, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 1})).is_connected():
                    break
            except Exception:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("anvil did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# test-only contracts --------------------------------------------------------------

RECEIVER_SRC = """
# pragma version ~=0.4.3
accept: public(bool)
last_data: public(Bytes[1024])

@deploy
def __init__(_accept: bool):
    self.accept = _accept

@external
def onERC721Received(_operator: address, _from: address, _tokenId: uint256, _data: Bytes[1024]) -> bytes4:
    self.last_data = _data
    if self.accept:
        return method_id("onERC721Received(address,address,uint256,bytes)", output_type=bytes4)
    return 0x00000000
"""

# Receives value and, once, tries to call back into `target` with `reenter_data`.
ATTACKER_SRC = """
# pragma version ~=0.4.3
target: public(address)
reenter_data: public(Bytes[1024])
attempted: public(bool)
reentered_ok: public(bool)
received: public(uint256)

@external
@payable
def call(target: address, data: Bytes[1024]):
    raw_call(target, data, value=msg.value)

@external
def arm(target: address, data: Bytes[1024]):
    self.target = target
    self.reenter_data = data

@external
@payable
def __default__():
    self.received += msg.value
    if self.target != empty(address) and not self.attempted:
        self.attempted = True
        self.reentered_ok = raw_call(self.target, self.reenter_data, revert_on_failure=False)
"""

TEST_SOURCES = {"test_Receiver": RECEIVER_SRC, "test_Attacker": ATTACKER_SRC}
