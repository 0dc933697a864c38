"""The soak's per-job history, the evidence a lost job is reported with (issue #10)."""

from node.soak import Track

pytest_plugins = ["chain_fixtures"]  # the world fixture (an embedded chain)


def test_a_retry_loop_does_not_push_out_how_the_job_got_there():
    t = Track(job_id=75, bought=0.0, duration=60, close_early=False, hold=1.0)
    t.say("chain open r0")
    t.say("chain assigned r0 0xabc")
    t.say("served r0 by 0xabc")
    for _ in range(200):  # the drain's expire attempts
        t.say("transaction reverted: expire: job still running")
    t.say("did not end in time")
    assert [h.split(" ", 1)[1] for h in t.history[:3]] == [
        "chain open r0", "chain assigned r0 0xabc", "served r0 by 0xabc",
    ]  # fmt: skip
    assert "(x200, last at" in t.history[3] and len(t.history) == 5
    assert t.note == "did not end in time"


def test_a_long_history_keeps_its_start_and_its_end():
    t = Track(job_id=1, bought=0.0, duration=60, close_early=False, hold=1.0)
    for i in range(100):
        t.say(f"step {i}")
    steps = [h.split(" ", 1)[1] for h in t.history]
    assert len(steps) == 40
    assert steps[:15] == [f"step {i}" for i in range(15)]
    assert steps[15:] == [f"step {i}" for i in range(75, 100)]


async def test_a_lost_jobs_report_names_its_chain_record(world):
    """The chain's view of a lost job next to the latest block's time (job 75 looked
    "still running" to a chain whose latest block was old)."""
    from types import SimpleNamespace

    from node.chain.errors import ChainUnavailable
    from node.soak import Soak, SoakSettings

    job = world.create_job(duration=100)
    world.assign(job)
    soak = Soak(SimpleNamespace(chain=world.kc), SoakSettings())
    record = await soak._chain_record(job)
    assert record.startswith("assigned r0 provider ") and "remaining 100 " in record
    assert " block " in record and " at " in record

    async def down(job_id):
        raise ChainUnavailable("connection refused")

    soak.net = SimpleNamespace(chain=SimpleNamespace(get_job=down))
    assert await soak._chain_record(job) == "unreadable: connection refused"


async def test_a_failed_docker_look_is_skipped_and_the_next_one_counts():
    """The double-assignment sampler outlives a container removed mid-list (docker's
    404), which once ended a 30-minute soak after 3 minutes."""
    from types import SimpleNamespace

    import docker

    from node.soak import Soak, SoakSettings

    providers = [SimpleNamespace(address="0xaa", name="p0"), SimpleNamespace(address="0xbb", name="p1")]
    on_two = [SimpleNamespace(labels={"kaisar.job": "7", "kaisar.node": a}) for a in ("0xaa", "0xbb")]
    answers = [docker.errors.NotFound("No such container: eaeebc71"), on_two]
    calls = []

    def listing(**kw):
        calls.append(kw)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    soak = Soak(SimpleNamespace(providers=providers), SoakSettings())
    client = SimpleNamespace(containers=SimpleNamespace(list=listing))
    await soak.sample(client)
    assert soak.sample_errors == 1 and soak.double == set()
    await soak.sample(client)
    assert soak.double == {7}
    assert all(kw.get("ignore_removed") for kw in calls)


def test_classify_a_close_that_raced_a_failure():
    """Job 29 of a 30-minute soak: served in round 0, its owner closed it after its
    hold while a certified failure had just reopened it as round 1. Served, closed by
    its owner and paid: not lost. Without the owner's close, or unpaid, it is lost."""
    from node.soak import Soak, SoakSettings

    soak = Soak(None, SoakSettings())

    def track(**kw):
        t = Track(job_id=29, bought=0.0, duration=60, close_early=True, hold=3.0)
        t.served = {0: ("0xdbdf", 5.3)}
        t.failed_at = [(13.0, "0xdbdf", 1)]
        t.final = "closed"
        for k, v in kw.items():
            setattr(t, k, v)
        return t

    assert soak.classify(track(closed_by_owner=True), {29: 10**15}) == "served"
    assert soak.classify(track(closed_by_owner=True), {}) == "lost"  # nobody was paid
    assert soak.classify(track(), {29: 10**15}) == "lost"  # closed, but not by its owner
    served_again = track(served={0: ("0xdbdf", 5.3), 1: ("0x7cf6", 40.0)})
    assert soak.classify(served_again, {29: 10**15}) == "reassigned"
    assert soak.classify(track(final="failed"), {}) == "refunded"
