"""The in-process development chain: eth-tester on py-evm.

eth-tester is not thread-safe, so every access goes through ``EmbeddedChain.lock``
(the client takes it around each call it runs in a worker thread). Transactions are
mined immediately, one block each. Time only moves when a test or the devnet asks.
"""

from __future__ import annotations

import threading

from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from node.identity import Identity


class EmbeddedChain:
    """A fresh eth-tester chain with ten funded development accounts (1e6 ETH each)."""

    def __init__(self) -> None:
        self.backend = PyEVMBackend()
        self.tester = EthereumTester(self.backend)
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        self.lock = threading.RLock()
        self.dev_accounts = [Identity(k.to_bytes()) for k in self.backend.account_keys]

    def timestamp(self) -> int:
        with self.lock:
            return int(self.tester.get_block_by_number("latest")["timestamp"])

    def increase_time(self, seconds: int) -> int:
        """Mine a block ``seconds`` after the latest one; returns its timestamp."""
        with self.lock:
            ts = self.timestamp() + int(seconds)
            # time_travel(ts) mines a block stamped ts - 1 and makes ts the pending
            # block's time; mining once more puts ts on the latest block.
            self.tester.time_travel(ts)
            self.tester.mine_blocks(1)
            return self.timestamp()

    def mine(self, blocks: int = 1) -> None:
        with self.lock:
            self.tester.mine_blocks(blocks)

    def snapshot(self) -> int:
        with self.lock:
            return self.tester.take_snapshot()

    def revert(self, snapshot_id: int) -> None:
        with self.lock:
            self.tester.revert_to_snapshot(snapshot_id)
