"""The trio client, senders, revert mapping, event watcher and the typed facade."""

import pytest
import trio

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import ETHER, GPU, PARAMS, STAKES, ident  # noqa: E402
from web3.exceptions import ContractLogicError  # noqa: E402

from node.chain.api import JOB_ASSIGNED, JOB_OPEN, KaisarChain  # noqa: E402
from node.chain.client import ChainClient, revert_reason  # noqa: E402
from node.chain.deploy import Deployment, verify_deployment  # noqa: E402
from node.chain.errors import ChainRevert, DeploymentMismatch, InsufficientFunds  # noqa: E402
from node.chain.watcher import EventWatcher  # noqa: E402
from node.consensus import votes  # noqa: E402

pytest_plugins = ["chain_fixtures"]
PRICE = 10**12


async def test_facade_reads(world):
    kc = world.kc
    cs = await kc.active_checkers()
    assert set(cs.node_keys) == {c.address for c in world.checkers}
    assert cs.total_stake == sum(STAKES) == await kc.total_active_stake()
    assert cs.stake_of(world.checkers[1].address) == STAKES[1]
    assert cs.stake_of(world.outsider.address) == 0
    assert kc.domain == world.dep.domain
    job = await kc.get_job(12345)
    assert not job.exists


async def test_job_flow_through_facade(world):
    kc = world.kc
    job_id = await kc.create_job(
        world.owner,
        spec_hash=b"\1" * 32,
        gpu_class=GPU,
        count=1,
        image="busybox",
        port=80,
        duration=100,
        price_per_second=PRICE,
    )
    job = await kc.get_job(job_id)
    assert job.exists and job.state == JOB_OPEN and job.owner == world.owner.address
    assert job.image == "busybox" and job.price == PRICE and job.deposit == 100 * PRICE
    prov = world.providers[0]
    d = votes.assign_digest(kc.domain, job_id, 0, prov.address)
    sigs = [votes.sign(c, d) for c in world.checkers[:2]]
    await kc.assign(world.outsider, job_id, 0, prov.address, sigs)
    job = await kc.get_job(job_id)
    assert job.state == JOB_ASSIGNED and job.provider == prov.address
    await kc.client.increase_time(10)
    assert await kc.earned(job_id) > 0
    await kc.claim_job(prov, job_id)
    d = votes.failure_digest(kc.domain, job_id, 0, prov.address)
    await kc.fail(
        world.outsider, job_id, 0, prov.address, [votes.sign(c, d) for c in world.checkers]
    )
    assert (await kc.get_job(job_id)).round == 1
    await kc.close_job(world.owner, job_id)
    with pytest.raises(ChainRevert, match="nothing to withdraw"):
        await kc.withdraw_escrow(world.owner)
    # rewards through the facade
    d = votes.popw_digest(kc.domain, 1, prov.address, votes.VERDICT_PASS, GPU)
    await kc.submit_popw(
        world.outsider, 1, prov.address, GPU, [votes.sign(c, d) for c in world.checkers]
    )
    await kc.fund_rewards(world.owner, ETHER)
    await kc.client.increase_time(PARAMS.unlock_period)
    assert await kc.claimable_rewards(prov.address) > 0
    await kc.claim_rewards(prov)
    # license + registration through the facade
    token = await kc.buy_license(world.outsider)
    key = ident("fresh-checker")
    await kc.register_checker(world.outsider, token, key, ETHER)
    assert (await kc.active_checkers()).stake_of(key.address) == ETHER


async def test_revert_reason_surfaces_with_function_name(world):
    client = world.kc.client
    with pytest.raises(ChainRevert) as info:
        await client.transact(world.owner, world.kc.license.functions.buy(), value=1)
    assert info.value.reason == "wrong price" and info.value.function == "buy"
    assert "buy: wrong price" in str(info.value)
    with pytest.raises(ChainRevert, match="no such token"):
        await client.call(world.kc.license.functions.ownerOf(999))


async def test_mined_revert_is_replayed_for_its_reason(world):
    # with an explicit gas limit nothing is estimated: the transaction is mined and fails
    client = world.kc.client
    with pytest.raises(ChainRevert) as info:
        await client.transact(world.owner, world.kc.license.functions.buy(), value=1, gas=100_000)
    assert info.value.reason == "wrong price"
    # the sender recovers its nonce and keeps working
    await client.transact(world.owner, world.kc.license.functions.buy(), value=PARAMS.license_price)


def test_revert_reason_of_http_error():
    exc = ContractLogicError("execution reverted: not owner", data="0x")
    assert revert_reason(exc) == "not owner"
    assert revert_reason(ValueError("x")) is None


async def test_insufficient_funds(world):
    poor = ident("poor")
    with pytest.raises(InsufficientFunds, match="fund it first"):
        await world.kc.client.transact(poor, world.kc.rewards.functions.fund(), value=1)
    with pytest.raises(InsufficientFunds):
        await world.kc.client.send_value(poor, world.owner.address, 1)


async def test_faucet_and_time(world):
    client = world.kc.client
    who = ident("newcomer")
    await client.fund(world.chain.dev_accounts[0], who.address, 5 * ETHER)
    assert await client.balance(who.address) == 5 * ETHER
    t0 = (await client.get_block())["timestamp"]
    await client.increase_time(3600)
    assert (await client.get_block())["timestamp"] >= t0 + 3600


async def test_one_sender_serializes_concurrent_transactions(world):
    client = world.kc.client
    fn = world.kc.rewards.functions.fund()
    before = await client.call(world.kc.rewards.functions.pool())
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(lambda: client.transact(world.owner, fn, value=1))
    assert await client.call(world.kc.rewards.functions.pool()) == before + 8


async def test_verify_deployment(world):
    client = world.kc.client
    await verify_deployment(client, world.dep)
    wrong_chain = Deployment(**{**world.dep.__dict__, "chain_id": world.dep.chain_id + 1})
    with pytest.raises(DeploymentMismatch, match="chain id"):
        await verify_deployment(client, wrong_chain)
    no_code = Deployment(**{**world.dep.__dict__, "escrow": world.owner.address})
    with pytest.raises(DeploymentMismatch, match="no Escrow contract"):
        await verify_deployment(client, no_code)
    assert Deployment.from_json(world.dep.to_json()) == world.dep


# the event watcher -------------------------------------------------------------------


async def test_watcher_delivers_each_event_once_after_confirmations(world):
    kc = world.kc
    head = await kc.client.block_number()
    w = EventWatcher(kc.client, kc.contracts(), from_block=head + 1, confirmations=2, reorg_depth=4)
    assert await w.poll() == []
    job_id = world.create_job(duration=10)
    assert await w.poll() == []  # not yet 2 blocks deep
    world.chain.mine(2)
    events = await w.poll()
    assert [e.name for e in events] == ["JobCreated"]
    assert events[0].args["job_id"] == job_id and events[0].args["owner"] == world.owner.address
    world.chain.mine(3)
    assert await w.poll() == []  # re-read, deduplicated


async def test_watcher_redelivers_after_reorg(world):
    kc = world.kc
    head = await kc.client.block_number()
    w = EventWatcher(kc.client, [kc.escrow], from_block=head + 1, confirmations=0, reorg_depth=8)
    snap = world.chain.snapshot()
    world.create_job(duration=10)
    first = await w.poll()
    assert len(first) == 1
    world.chain.revert(snap)  # the block is replaced by a different one
    world.chain.increase_time(7)
    world.create_job(duration=20)
    second = await w.poll()
    assert len(second) == 1 and second[0].args["duration"] == 20
    assert second[0].block_hash != first[0].block_hash


async def test_watcher_reads_only_new_blocks_while_the_tip_is_unchanged(world):
    """Polls with no new block make no eth_getLogs request; a new block is read alone
    (its event once); a reorg of the last block read is still re-read and redelivered."""
    from node.chain.watcher import REREAD_EVERY

    kc = world.kc
    head = await kc.client.block_number()
    w = EventWatcher(kc.client, [kc.escrow], from_block=head + 1, reorg_depth=8)
    world.create_job(duration=10)
    assert len(await w.poll()) == 1
    reads = w.log_reads
    for _ in range(REREAD_EVERY - 2):  # idle: nothing to read
        assert await w.poll() == []
    assert w.log_reads == reads
    snap = world.chain.snapshot()
    world.create_job(duration=11)
    assert [e.args["duration"] for e in await w.poll()] == [11]
    assert w.log_reads == reads + 1
    world.chain.revert(snap)  # that block is replaced by another at the same height
    world.create_job(duration=12)
    assert [e.args["duration"] for e in await w.poll()] == [12]


async def test_watcher_task_streams_events(world):
    kc = world.kc
    head = await kc.client.block_number()
    w = EventWatcher(kc.client, [kc.escrow], from_block=head + 1, poll_interval=0.01)
    send, recv = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run, send)
        await trio.to_thread.run_sync(world.create_job)
        with trio.fail_after(5):
            ev = await recv.receive()
        assert ev.name == "JobCreated"
        nursery.cancel_scope.cancel()


async def test_watcher_wakes_on_own_transaction(world):
    """A transaction sent through the watcher's own ChainClient starts the next poll at
    once: the event arrives long before the (here: 300 s) poll interval."""
    kc = world.kc
    head = await kc.client.block_number()
    w = EventWatcher(kc.client, [kc.escrow], from_block=head + 1, poll_interval=300)
    send, recv = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run, send)
        with trio.fail_after(10):
            while not w.caught_up:  # the first poll is done: the watcher now waits
                await trio.sleep(0.01)
            version = kc.client.head_version
            job_id = await kc.create_job(
                world.owner, spec_hash=b"\x11" * 32, gpu_class=GPU, count=1,
                image="busybox:latest", port=8080, duration=10, price_per_second=10**12,
            )  # fmt: skip
            assert kc.client.head_version > version
            ev = await recv.receive()
        assert ev.name == "JobCreated" and ev.args["job_id"] == job_id
        nursery.cancel_scope.cancel()


async def test_connect_embedded():
    c = ChainClient.connect("embedded")
    assert c.embedded is not None and c.chain_id == await c.run(lambda: c.w3.eth.chain_id)
    assert KaisarChain  # facade importable without a deployment


async def test_genesis_embedded_chain():
    from node.chain.genesis import GenesisChecker, start_embedded

    keys = [ident(f"genesis{i}") for i in range(3)]
    dev = await start_embedded([GenesisChecker(k, k, ETHER * (i + 1)) for i, k in enumerate(keys)])
    cs = await dev.chain.active_checkers()
    assert cs.node_keys == tuple(k.address for k in keys) and cs.total_stake == 6 * ETHER
    await verify_deployment(dev.client, dev.deployment)
    user = ident("genesis-user")
    await dev.fund(user.address)
    assert await dev.client.balance(user.address) == 100 * ETHER
    assert await dev.client.call(dev.chain.rewards.functions.pool()) == 100 * ETHER


async def test_watcher_catches_up_in_bounded_ranges(world):
    kc = world.kc
    start = await kc.client.block_number() + 1
    ids = [world.create_job(duration=10 + i) for i in range(5)]
    world.chain.mine(3)
    w = EventWatcher(kc.client, [kc.escrow], from_block=start, max_range=2, reorg_depth=2)
    seen = []
    for _ in range(10):
        seen += [e.args["job_id"] for e in await w.poll()]
        if w.caught_up:
            break
    assert seen == ids and w.caught_up


async def test_watcher_survives_unreachable_rpc(caplog):
    from chain_fixtures import _free_port
    from web3 import Web3

    url = f"http://127.0.0.1:{_free_port()}"
    client = ChainClient(Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 1})), url=url)
    w = EventWatcher(client, [], poll_interval=0.01)
    send, _recv = trio.open_memory_channel(1)
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run, send)
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert "event poll failed" in caplog.text


async def test_job_and_checkers_reads_job_set_and_time_at_one_block(world):
    kc = world.kc
    job_id = world.create_job(duration=10)
    job, checkers, ts = await kc.job_and_checkers(job_id)
    assert job == await kc.get_job(job_id) and checkers == await kc.active_checkers()
    assert ts == (await kc.client.get_block("latest"))["timestamp"]


async def test_a_transaction_on_the_embedded_chain_is_one_worker_hop(world):
    # Nonce, fees, dry run, build, funds check, broadcast and the receipt (mined on
    # send) in one thread hop: each hop waits for the GIL behind every busy thread of
    # an in-process network (it took seven: ~8 ms each in a loaded devnet).
    client = world.kc.client
    hops: list[str] = []
    real = client.run

    async def counting(fn, *args):
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args)

    client.run = counting  # type: ignore[method-assign]
    before = await real(world.kc.rewards.functions.pool().call)
    receipt = await client.transact(world.owner, world.kc.rewards.functions.fund(), value=7)
    assert receipt["status"] == 1 and len(hops) == 1, hops
    assert await real(world.kc.rewards.functions.pool().call) == before + 7
    # a revert still names its function and costs no more hops
    hops.clear()
    with pytest.raises(ChainRevert) as info:
        await client.transact(world.owner, world.kc.license.functions.buy(), value=1)
    assert info.value.function == "buy" and len(hops) == 1


async def test_a_cancelled_read_does_not_wait_for_a_hung_rpc():
    """An RPC endpoint that accepts the connection and never answers: a read cancelled
    by its caller returns at once instead of after the HTTP timeout (Ctrl-C on
    `kaisar client connect` waited for a chain read)."""
    import socket

    from web3 import Web3

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        client = ChainClient(Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30})), url=url)
        t0 = trio.current_time()
        with trio.move_on_after(0.3) as scope:
            await client.block_number()
        assert scope.cancelled_caught
        assert trio.current_time() - t0 < 10  # not the 30 s HTTP timeout
