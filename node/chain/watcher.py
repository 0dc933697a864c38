"""Contract events by polling ``eth_getLogs``, with a confirmation depth and reorg re-reads.

Each poll reads the logs of the confirmed blocks not read yet (up to ``head -
confirmations``). It first checks that the last block it read still has the hash it had
(one ``eth_getBlockByNumber``): if not, or if the chain got shorter, a reorg replaced it
and the poll reads again from ``reorg_depth`` blocks behind. (An unchanged block means
every block below it is unchanged: each names its parent's hash.) A poll with no new
block reads no logs at all. Every ``REREAD_EVERY``-th poll re-reads the ``reorg_depth``
window anyway, for RPC nodes whose log index lags their head (a log missing from one
read shows up in a later one). A log is identified by (block hash, log index): one already
delivered is skipped, one that moved to a new block after a reorg has a new block hash
and is delivered again. Consumers therefore see every confirmed event at least once
and must be idempotent on (event name, args) - the protocol's events are (a job is
created once, assigned once per round).

Catching up from an old block reads at most ``max_range`` blocks per request (public
nodes cap ``eth_getLogs`` spans) and polls again at once until ``caught_up``.

Between polls the watcher sleeps ``poll_interval``, or less: a block this process caused
(``ChainClient.wait_head``: one of its own transactions mined) starts the next poll at
once, so in-process chains (devnet, tests) deliver events without the poll delay.

Error rules: a poll that fails because the RPC is unreachable (``ChainError``) is logged
and retried after ``poll_interval``; anything else propagates to the nursery. Logs with
a topic we have no ABI for are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio
from eth_utils import event_abi_to_log_topic
from web3 import Web3
from web3.exceptions import BlockNotFound

from node.chain.client import ChainClient
from node.chain.errors import ChainError

log = logging.getLogger("kaisar.chain.watcher")

REREAD_EVERY = 16  # polls between two re-reads of the reorg window without a reorg seen


@dataclass(frozen=True)
class ChainEvent:
    name: str
    args: dict
    address: str
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int


class EventWatcher:
    def __init__(
        self,
        client: ChainClient,
        contracts: list[Any],
        *,
        from_block: int = 0,
        confirmations: int = 0,
        reorg_depth: int = 12,
        poll_interval: float = 1.0,
        max_range: int = 2000,
    ) -> None:
        self.client = client
        self.confirmations = confirmations
        self.reorg_depth = reorg_depth
        self.poll_interval = poll_interval
        self.max_range = max_range
        self.next_block = from_block  # first block not yet fully confirmed-and-read
        self._from_block = from_block
        self._caught_up = False
        self._seen: dict[tuple[bytes, int], int] = {}
        self._tip: tuple[int, bytes | None] | None = None  # (number, hash) of the last block read
        self.log_reads = 0  # eth_getLogs requests made (tests, benchmarks)
        self._polls = 0
        self._decoders: dict[tuple[str, bytes], Any] = {}
        for contract in contracts:
            for item in contract.abi:
                if item.get("type") == "event":
                    topic = bytes(event_abi_to_log_topic(item))
                    self._decoders[(contract.address, topic)] = getattr(
                        contract.events, item["name"]
                    )()
        self._addresses = sorted({c.address for c in contracts})

    async def poll(self) -> list[ChainEvent]:
        """One read: new confirmed events in chain order (one worker-thread hop)."""
        self._polls += 1
        got = await self.client.run(
            self._read, self.next_block, self._tip, self._polls % REREAD_EVERY == 0
        )
        if got is None:
            self._caught_up = True  # nothing confirmed to read yet
            return []
        safe, end, tip, logs = got
        # a shorter chain after a reorg: read again from where it now ends
        self.next_block = min(self.next_block, safe + 1)
        if logs is None:  # no new block since the last read, and no reorg
            self._caught_up = True
            return []
        self.log_reads += 1
        out: list[ChainEvent] = []
        for entry in sorted(logs, key=lambda x: (x["blockNumber"], x["logIndex"])):
            key = (bytes(entry["blockHash"]), int(entry["logIndex"]))
            if key in self._seen:
                continue
            self._seen[key] = int(entry["blockNumber"])
            decoder = self._decoders.get(
                (Web3.to_checksum_address(entry["address"]), bytes(entry["topics"][0]))
            )
            if decoder is None:
                continue
            ev = decoder.process_log(entry)
            out.append(
                ChainEvent(
                    name=ev["event"],
                    args=dict(ev["args"]),
                    address=ev["address"],
                    block_number=int(ev["blockNumber"]),
                    block_hash=bytes(ev["blockHash"]),
                    tx_hash=bytes(ev["transactionHash"]),
                    log_index=int(ev["logIndex"]),
                )
            )
        self.next_block = end + 1
        self._caught_up = end == safe
        self._tip = tip
        horizon = self.next_block - self.reorg_depth - 1
        self._seen = {k: b for k, b in self._seen.items() if b >= horizon}
        return out

    def _read(
        self, next_block: int, tip: tuple[int, bytes | None] | None, reread: bool
    ) -> tuple[int, int, tuple[int, bytes | None], list[Any] | None] | None:
        """The chain reads of one poll (worker thread): None if nothing is confirmed
        yet, else (safe head, last block read, its (number, hash), logs or None when
        there was no block to read)."""
        w3 = self.client.w3
        safe = int(w3.eth.block_number) - self.confirmations
        if safe < self._from_block:
            return None
        next_block = min(next_block, safe + 1)
        unchanged = (
            not reread
            and tip is not None
            and tip[1] is not None
            and tip[0] == next_block - 1
            and self._block_hash(tip[0]) == tip[1]
        )
        start = next_block if unchanged else max(self._from_block, next_block - self.reorg_depth)
        # catch up in bounded ranges: public nodes cap eth_getLogs spans
        end = min(safe, next_block + self.max_range - 1)
        if start > end:
            return safe, end, (end, tip[1] if tip else None), None
        # the hash before the logs: a reorg in between makes the next poll re-read
        new_tip = (end, self._block_hash(end))
        logs = w3.eth.get_logs({"fromBlock": start, "toBlock": end, "address": self._addresses})
        return safe, end, new_tip, list(logs)

    def _block_hash(self, number: int) -> bytes | None:
        try:
            return bytes(self.client.w3.eth.get_block(number)["hash"])
        except BlockNotFound:  # the chain is shorter than that now
            return None

    @property
    def caught_up(self) -> bool:
        """False while the last poll stopped short of the confirmed head (more to read)."""
        return self._caught_up

    async def run(
        self,
        send: trio.MemorySendChannel,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Poll forever, sending each event; closes ``send`` when cancelled."""
        async with send:
            task_status.started()
            while True:
                head = self.client.head_version  # before the read: a later block wakes us
                try:
                    events = await self.poll()
                except ChainError as exc:
                    log.warning("event poll failed error=%s", exc)
                    await trio.sleep(self.poll_interval)
                    continue
                for ev in events:
                    await send.send(ev)
                if self._caught_up:
                    await self.client.wait_head(head, self.poll_interval)
                else:  # still catching up: read the next range at once
                    await trio.sleep(0)
