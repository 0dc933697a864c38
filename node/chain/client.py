"""Trio-friendly access to an Ethereum JSON-RPC chain or the embedded eth-tester chain.

Resource rules:
- web3 is synchronous; every call runs in a worker thread (``trio.to_thread.run_sync``).
  With the embedded chain every call also holds ``EmbeddedChain.lock``, because
  eth-tester is not thread-safe.
- Each signing key has exactly one ``Sender`` (``ChainClient.sender``). It serializes
  that key's transactions behind a ``trio.Lock``, owns its nonce, estimates gas,
  waits for the receipt and re-broadcasts a transaction the node dropped. Everything
  up to the broadcast plus one receipt read is one worker-thread hop (the embedded
  chain mines on send, so a transaction there is one hop); only a receipt that is not
  there yet is polled, every ``RECEIPT_POLL`` s.
- ``head_version`` counts the blocks this process knows it caused (a mined transaction
  of any of its senders, ``increase_time``); ``wait_head`` wakes on the next one. Event
  watchers and the light client use it to react at once to what happened in-process,
  and keep polling for everything else (other processes, other nodes).

Error rules: a revert, from eth-tester (``TransactionFailed``) or a JSON-RPC node
(``ContractLogicError``), always surfaces as ``ChainRevert`` with the contract's
reason; an unreachable endpoint as ``ChainUnavailable``; an account that cannot pay
as ``InsufficientFunds``. Only dropped transactions are retried (bounded); everything
else propagates.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

import trio
from eth_account import Account
from eth_tester.exceptions import TransactionFailed
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)

from node.chain.embedded import EmbeddedChain
from node.chain.errors import ChainError, ChainRevert, ChainUnavailable, InsufficientFunds
from node.identity import Identity

log = logging.getLogger("kaisar.chain")
T = TypeVar("T")

EMBEDDED = "embedded"
GAS_MARGIN = 1.25  # estimate_gas is exact for the state it ran on; state moves
# ...and time moves: Escrow.close/claim estimated one block before they run can take
# a costlier branch (a first payout credit is a fresh 20k-gas SSTORE), which ran out
# of gas on anvil with the proportional margin alone.
GAS_HEADROOM = 60_000
RECEIPT_POLL = 0.05  # seconds between receipt polls (embedded mines instantly)
RESEND_AFTER = 15.0  # re-broadcast a transaction the node no longer knows
RECEIPT_TIMEOUT = 120.0
MAX_RESENDS = 3
EMBEDDED_GAS = 5_000_000  # per transaction on the embedded chain (block limit 30M)


def revert_reason(exc: BaseException) -> str | None:
    """The contract's revert message from either backend, or None if not a revert."""
    if isinstance(exc, ContractLogicError):
        msg = exc.message or str(exc)
    elif isinstance(exc, TransactionFailed):
        msg = str(exc.args[0]) if exc.args else "reverted"
    elif isinstance(exc, Web3RPCError) and "revert" in str(exc).lower():
        msg = exc.message or str(exc)
    else:
        return None
    if isinstance(msg, bytes):
        msg = msg.decode(errors="replace")
    msg = str(msg)
    for prefix in ("execution reverted: ", "execution reverted:", "execution reverted"):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
            break
    return msg.strip().strip("'\"") or "reverted without a reason"


def _is_insufficient_funds(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        "insufficient funds" in text
        or "doesn't have enough funds" in text
        or "cannot afford" in text  # py-evm's ValidationError through eth-tester
    )


def _is_nonce_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "nonce" in text and ("invalid" in text or "too low" in text or "too high" in text)


class ChainClient:
    """One chain connection: reads, senders per key, dev helpers for test chains."""

    def __init__(self, w3: Web3, *, embedded: EmbeddedChain | None = None, url: str = "") -> None:
        self.w3 = w3
        self.embedded = embedded
        self.url = url or (EMBEDDED if embedded else "")
        self._lock: threading.RLock | None = embedded.lock if embedded else None
        self._senders: dict[str, Sender] = {}
        self._chain_id: int | None = None
        self.head_version = 0
        self._head_moved = trio.Event()

    # construction ---------------------------------------------------------------

    @classmethod
    def connect(cls, rpc: str, *, timeout: float = 10.0) -> ChainClient:
        """``embedded`` (a fresh in-process chain) or an http(s):// JSON-RPC URL.

        Checks the endpoint answers (chain id) and raises ChainUnavailable otherwise.
        """
        if rpc == EMBEDDED:
            return cls.from_embedded(EmbeddedChain())
        if not rpc.startswith(("http://", "https://")):
            raise ChainUnavailable(
                f"unsupported RPC URL {rpc!r}: use http(s)://host:port or 'embedded'"
            )
        w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": timeout}))
        client = cls(w3, url=rpc)
        try:
            client._chain_id = int(w3.eth.chain_id)
        except Exception as exc:
            raise ChainUnavailable(f"cannot reach RPC {rpc}: {_short(exc)}") from None
        return client

    @classmethod
    def from_embedded(cls, chain: EmbeddedChain) -> ChainClient:
        return cls(chain.w3, embedded=chain)

    # running web3 calls ------------------------------------------------------------

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one web3 call on this thread (under the embedded lock if needed)."""
        with self._lock if self._lock is not None else nullcontext():
            try:
                return fn(*args)
            except (ContractLogicError, TransactionFailed) as exc:
                raise ChainRevert(revert_reason(exc) or "reverted") from None
            except ChainError:
                raise
            except (OSError, TimeoutError) as exc:
                raise ChainUnavailable(f"RPC {self.url} failed: {_short(exc)}") from None
            except Exception as exc:
                if (
                    type(exc).__module__.startswith("requests")
                    or "Connection" in type(exc).__name__
                ):
                    raise ChainUnavailable(f"RPC {self.url} failed: {_short(exc)}") from None
                raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one web3 call in a worker thread."""
        return await trio.to_thread.run_sync(self.run_sync, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``run`` for a read: cancelling the caller does not wait for the thread (a
        slow or hung RPC answers into the void). Writes keep ``run``: the sender must
        see its transaction's outcome. A ``kaisar client connect`` stopped with Ctrl-C
        once took over 10 s to exit, waiting for a chain read."""
        # trio-stubs (trio_typing) predate abandon_on_cancel; trio 0.35 has only it
        return await trio.to_thread.run_sync(  # type: ignore[call-arg]
            functools.partial(self.run_sync, fn, *args), abandon_on_cancel=True
        )

    # local head changes ----------------------------------------------------------------

    def notify_head(self) -> None:
        """A block this process caused is on chain: wake ``wait_head`` callers."""
        self.head_version += 1
        moved, self._head_moved = self._head_moved, trio.Event()
        moved.set()

    async def wait_head(self, since: int, timeout: float) -> None:
        """Return when ``head_version`` passes ``since``, or after ``timeout`` s."""
        if self.head_version != since:
            return
        with trio.move_on_after(timeout):
            await self._head_moved.wait()

    # reads ---------------------------------------------------------------------------

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.run_sync(lambda: self.w3.eth.chain_id))
        return self._chain_id

    async def call(self, fn: Any, block: int | str = "latest") -> Any:
        """Call a view function (``contract.functions.f(args)``); reverts -> ChainRevert."""
        return await self.read(lambda: fn.call(block_identifier=block))

    async def block_number(self) -> int:
        return int(await self.read(lambda: self.w3.eth.block_number))

    async def get_block(self, block: int | str = "latest") -> Any:
        return await self.read(self.w3.eth.get_block, block)

    async def balance(self, address: str) -> int:
        return int(await self.read(self.w3.eth.get_balance, address))

    async def code_at(self, address: str) -> bytes:
        return bytes(await self.read(self.w3.eth.get_code, address))

    def contract(self, address: str, abi: list) -> Any:
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)

    # writes --------------------------------------------------------------------------

    def sender(self, identity: Identity) -> Sender:
        """The one sender of this key (created on first use)."""
        s = self._senders.get(identity.address)
        if s is None:
            s = self._senders[identity.address] = Sender(self, identity)
        return s

    async def transact(
        self, identity: Identity, fn: Any, *, value: int = 0, gas: int | None = None
    ) -> Any:
        """Send ``contract.functions.f(args)`` from ``identity``; returns the receipt."""
        return await self.sender(identity).send(fn, value=value, gas=gas)

    async def send_value(self, identity: Identity, to: str, amount: int) -> Any:
        return await self.sender(identity).send(None, to=to, value=amount)

    async def deploy(self, identity: Identity, abi: list, bytecode: str, *args: Any) -> str:
        """Deploy a contract; returns its checksummed address."""
        ctor = self.w3.eth.contract(abi=abi, bytecode=bytecode).constructor(*args)
        receipt = await self.sender(identity).send(ctor)
        return Web3.to_checksum_address(receipt["contractAddress"])

    # dev chains (embedded or anvil) ---------------------------------------------------

    async def increase_time(self, seconds: int) -> None:
        """Advance chain time by ``seconds`` and mine a block (tests, devnet)."""
        if self.embedded is not None:
            await self.run(self.embedded.increase_time, seconds)
        else:
            await self.run(self.w3.provider.make_request, "evm_increaseTime", [int(seconds)])
            await self.run(self.w3.provider.make_request, "evm_mine", [])
        self.notify_head()

    async def fund(self, faucet: Identity, address: str, amount: int) -> None:
        """Devnet faucet: send ``amount`` wei from a funded dev account."""
        await self.send_value(faucet, Web3.to_checksum_address(address), amount)


class Sender:
    """Serializes one key's transactions: nonce, gas, fees, receipt, re-broadcast."""

    def __init__(self, client: ChainClient, identity: Identity) -> None:
        self.client = client
        self.identity = identity
        self.address = identity.address
        self._checksum = Web3.to_checksum_address(identity.address)
        self._account = Account.from_key(identity.secret)
        self._lock = trio.Lock()
        self._nonce: int | None = None
        self.resend_after = RESEND_AFTER
        self.receipt_timeout = RECEIPT_TIMEOUT
        self.resends = 0  # re-broadcasts so far (metrics, tests)

    async def send(
        self, fn: Any, *, to: str | None = None, value: int = 0, gas: int | None = None
    ) -> Any:
        async with self._lock:
            for attempt in range(2):
                try:
                    return await self._send_locked(fn, to, value, gas)
                except Exception as exc:
                    self._nonce = None  # re-read from the chain next time
                    # someone else used this key (or the chain was reset): retry once
                    if attempt == 0 and _is_nonce_error(exc):
                        log.warning("nonce out of sync, retrying sender=%s", self.address)
                        continue
                    raise
                except BaseException:
                    self._nonce = None
                    raise
            raise AssertionError("unreachable")

    async def _send_locked(self, fn: Any, to: str | None, value: int, gas: int | None) -> Any:
        c = self.client
        name = getattr(fn, "fn_name", None) or ("deploy" if fn is not None else "transfer")
        # Everything up to the broadcast, and one receipt read, is one worker-thread hop:
        # on the embedded chain (mined on send) a transaction costs one hop instead of
        # eight, each of which waited for the GIL behind every other busy thread of an
        # in-process network; on a JSON-RPC node the same blocking calls run in order.
        tx, raw, txhash, receipt = await c.run(self._prepare_and_send, fn, to, value, gas, name)
        if receipt is None:  # not mined yet: poll (a remote node, or anvil without automine)
            receipt = await self._wait(txhash, raw)
        c.notify_head()
        log.debug(
            "tx sent=%s fn=%s gas=%s status=%s",
            self.address,
            name,
            receipt["gasUsed"],
            receipt["status"],
        )
        if receipt["status"] != 1:
            raise ChainRevert(await self._replay_reason(tx, receipt), function=name)
        return receipt

    def _prepare_and_send(
        self, fn: Any, to: str | None, value: int, gas: int | None, name: str
    ) -> tuple[dict, bytes, bytes, Any]:
        """(worker thread, under the embedded lock) nonce, fees, gas, funds check, sign,
        broadcast, then one receipt read: (tx, raw, hash, receipt or None)."""
        c = self.client
        w3 = c.w3
        # The lock holds until the previous transaction's receipt, so the node's
        # pending count is exact; reading it also heals after a chain reset.
        self._nonce = int(w3.eth.get_transaction_count(self._checksum, "pending"))
        base = {"from": self.address, "value": value, "nonce": self._nonce, "chainId": c.chain_id}
        base.update(self._fees())
        if fn is None:
            tx = dict(base, to=to, data=b"")
            if gas is None:
                tx["gas"] = self._estimate(tx, name)
        else:
            if gas is None and c.embedded is not None and hasattr(fn, "call"):
                # eth-tester estimates by binary search (~20 executions); one call
                # surfaces the revert reason and a fixed limit does the rest.
                self._dry_run(fn, value, name)
                gas = EMBEDDED_GAS
            # a placeholder limit stops build_transaction from estimating on "latest"
            base["gas"] = gas if gas is not None else EMBEDDED_GAS
            tx = self._contract_call(fn.build_transaction, name, value, base)
            if gas is None:
                tx["gas"] = self._estimate({k: v for k, v in tx.items() if k != "gas"}, name)
        self._check_funds(tx)
        raw = self._account.sign_transaction(tx).raw_transaction
        txhash = self._broadcast_sync(raw)
        self._nonce += 1
        try:
            receipt = w3.eth.get_transaction_receipt(HexBytes(txhash))
        except Exception:  # not mined yet (TransactionNotFound), or a hiccup: poll
            receipt = None
        return tx, raw, txhash, receipt

    def _contract_call(self, call: Callable[..., T], name: str, value: int, *args: Any) -> T:
        """One estimate / dry run / build: a revert names the function, a poor sender
        gets InsufficientFunds; anything else propagates (``run_sync`` maps it)."""
        try:
            return call(*args)
        except (ContractLogicError, TransactionFailed) as exc:
            raise ChainRevert(revert_reason(exc) or "reverted", function=name) from None
        except ChainRevert as exc:
            raise ChainRevert(exc.reason, function=name) from None
        except Exception as exc:
            if _is_insufficient_funds(exc):
                raise InsufficientFunds(self._funds_message(value)) from None
            raise

    def _dry_run(self, fn: Any, value: int, name: str) -> None:
        self._contract_call(lambda: fn.call({"from": self.address, "value": value}), name, value)

    def _fees(self) -> dict:
        w3 = self.client.w3
        base_fee = w3.eth.get_block("latest").get("baseFeePerGas")
        if base_fee is None:
            return {"gasPrice": int(w3.eth.gas_price)}
        tip = 10**9
        return {"maxPriorityFeePerGas": tip, "maxFeePerGas": int(base_fee) * 2 + tip}

    def _estimate(self, tx: dict, name: str) -> int:
        """Gas for ``tx`` in the block it will be mined in ("pending"). The default,
        "latest", runs it at the last block's timestamp: on a chain that mines only on
        demand (anvil) and has been idle, a call that depends on time (Escrow.expire
        after the paid time) reverts "job still running" there, forever, since nothing
        else mines a block (docs/SOAK.md, job 75)."""
        # (eth-tester does not take a block here; its time moves only when told to)
        block = () if self.client.embedded is not None else ("pending",)
        est = self._contract_call(self.client.w3.eth.estimate_gas, name, tx["value"], tx, *block)
        return int(est * GAS_MARGIN) + GAS_HEADROOM

    def _check_funds(self, tx: dict) -> None:
        price = tx.get("maxFeePerGas", tx.get("gasPrice", 0))
        need = int(tx.get("value", 0)) + int(tx["gas"]) * int(price)
        have = int(self.client.w3.eth.get_balance(self._checksum))
        if have < need:
            raise InsufficientFunds(self._funds_message(int(tx.get("value", 0)), have, need))

    def _funds_message(self, value: int, have: int | None = None, need: int | None = None) -> str:
        detail = f" (has {have} wei, needs {need} wei)" if have is not None else ""
        return f"account {self.address} cannot pay {value} wei plus gas{detail}: fund it first"

    def _broadcast_sync(self, raw: bytes) -> bytes:
        try:
            return bytes(self.client.w3.eth.send_raw_transaction(raw))
        except TransactionFailed as exc:
            raise ChainRevert(revert_reason(exc) or "reverted") from None
        except ChainRevert:
            raise
        except Exception as exc:
            if _is_insufficient_funds(exc):
                raise InsufficientFunds(self._funds_message(0)) from None
            if "already known" in str(exc).lower():
                return bytes(Web3.keccak(raw))
            raise

    async def _broadcast(self, raw: bytes) -> bytes:
        return await self.client.run(self._broadcast_sync, raw)

    async def _wait(self, txhash: bytes, raw: bytes) -> Any:
        """Poll for the receipt; re-broadcast when the node forgot the transaction."""
        try:
            with trio.fail_after(self.receipt_timeout):
                return await self._poll_receipt(txhash, raw)
        except trio.TooSlowError:
            raise ChainError(
                f"no receipt for transaction 0x{txhash.hex()} after {self.receipt_timeout:.0f} s "
                f"from {self.client.url}: is the node mining?"
            ) from None

    async def _poll_receipt(self, txhash: bytes, raw: bytes) -> Any:
        c = self.client
        resends = 0
        last_seen = trio.current_time()
        while True:
            try:
                return await c.run(c.w3.eth.get_transaction_receipt, txhash)
            except TransactionNotFound:
                pass
            if trio.current_time() - last_seen > self.resend_after:
                try:
                    await c.run(c.w3.eth.get_transaction, txhash)
                except TransactionNotFound:
                    # Dropped from the pool (eviction, node restart): same bytes, same
                    # nonce, so re-broadcasting can never double-spend.
                    if resends >= MAX_RESENDS:
                        raise ChainError(
                            f"transaction 0x{txhash.hex()} dropped {resends} times by {c.url}"
                        ) from None
                    resends += 1
                    self.resends += 1
                    log.warning("tx dropped, resending hash=0x%s attempt=%d", txhash.hex(), resends)
                    await self._broadcast(raw)
                last_seen = trio.current_time()
            await trio.sleep(RECEIPT_POLL)

    async def _replay_reason(self, tx: dict, receipt: Any) -> str:
        """Why a mined transaction failed: re-run it as a call on the block before."""
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        call["gas"] = tx["gas"]
        try:
            await self.client.run(self.client.w3.eth.call, call, receipt["blockNumber"] - 1)
        except ChainRevert as exc:
            return exc.reason
        except Exception as exc:
            return _short(exc)
        if receipt["gasUsed"] >= tx["gas"]:
            return "out of gas"
        return "reverted"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


__all__ = ["ChainClient", "Sender", "revert_reason", "EMBEDDED", "TimeExhausted"]
