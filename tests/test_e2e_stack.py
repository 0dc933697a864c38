"""End-to-end over the real stack (issue 7 part 4): ``open_stack`` in this process, i.e.
real libp2p hosts, the embedded chain with the Kaisar contracts, 4 checkers running the
checker role, 3 providers running containers on the private Docker Engine.

- two buyers at once get two different containers, each reachable through its tunnel;
- a job no provider fits is refused before any payment;
- a provider killed during a job: the checkers notice the missed heartbeats, certify the
  failure on chain (``Escrow.fail`` -> ``JobReassigned``), assign round 1 to another
  provider, and the client's local port answers again from the new container.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from node.client.api import Client
from node.client.errors import NoProviderFits
from node.demo import http_get
from node.devnet import FAST_GOSSIP
from node.devnet_stack import Stack, open_stack
from node.identity import Identity
from node.p2p.host import HostOptions, open_host
from node.roles.checker.service import CheckerSettings
from node.roles.provider.images import DEMO_HTTP_IMAGE, DEMO_HTTP_PORT
from node.roles.provider.runtime import LABEL_NODE, ContainerRuntime

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ETHER = 10**18
READY_TIMEOUT = 60.0
DEPLOY_TIMEOUT = 60.0


@asynccontextmanager
async def stack_for(docker_engine: Any, tmp_path: Any, **kw: Any) -> AsyncIterator[Stack]:
    def runtime(node: str) -> ContainerRuntime:
        return ContainerRuntime(node, docker_host=docker_engine.host, stop_timeout=1)

    async with open_stack(
        workdir=tmp_path / "stack", runtime_factory=runtime, explorer=False, **kw
    ) as s:
        yield s


async def wait_standing(s: Stack, n: int, timeout: float = READY_TIMEOUT) -> None:
    """Every checker holds a PoPW PASS certificate for at least n providers."""
    with trio.fail_after(timeout):
        while min(len(c.standing) for c in s.checker_services) < n:
            await trio.sleep(0.2)


@asynccontextmanager
async def second_buyer(s: Stack, funds: int = 100 * ETHER) -> AsyncIterator[Client]:
    """Another end-user: own key (funded), own host bootstrapped to the devnet."""
    ident = Identity.generate()
    await s.dev.fund(ident.address, funds)
    opts = HostOptions(bootstrap=s.bootstrap(), gossip=FAST_GOSSIP, dht=False)
    async with open_host(ident, network=s.network, domain=s.wire_domain, options=opts) as host:
        with trio.fail_after(20):
            while not host.connected_peers():
                await trio.sleep(0.05)
        c = Client(ident, host, s.chain, ad_wait=15.0, poll_interval=0.3)
        await c.start()
        yield c


def containers_of(docker_engine: Any, s: Stack) -> dict[int, str]:
    """job id -> container id, over every provider of this stack."""
    nodes = {h.address for h in s.providers}
    out = {}
    for c in docker_engine.client.containers.list(filters={"label": "kaisar.job"}):
        if c.labels.get(LABEL_NODE) in nodes:
            out[int(c.labels["kaisar.job"])] = c.id
    return out


async def answers(port: int, job: int) -> bool:
    page = await http_get(port, f"/cgi-bin/echo?job={job}")
    return b"200" in page.split(b"\r\n", 1)[0] and f"job={job}".encode() in page


async def test_two_buyers_at_once_get_different_containers(docker_engine, tmp_path):
    async with stack_for(docker_engine, tmp_path) as s, second_buyer(s) as bob:
        assert s.user is not None
        alice = Client(s.user, s.user_host, s.chain, ad_wait=15.0, poll_interval=0.3)
        await alice.start()
        await wait_standing(s, 2)

        jobs: dict[str, int] = {}
        deps: dict[str, Any] = {}

        async def buy_and_wait(name: str, c: Client) -> None:
            jobs[name] = await c.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, 1.0)
            deps[name] = await c.wait_deployed(jobs[name], timeout=DEPLOY_TIMEOUT)

        async with trio.open_nursery() as n:  # both purchases in flight together
            n.start_soon(buy_and_wait, "alice", alice)
            n.start_soon(buy_and_wait, "bob", bob)

        assert jobs["alice"] != jobs["bob"]
        # one CPU slot per provider: two jobs cannot share one
        assert deps["alice"].provider != deps["bob"].provider
        running = containers_of(docker_engine, s)
        assert jobs["alice"] in running and jobs["bob"] in running
        assert running[jobs["alice"]] != running[jobs["bob"]]

        async with trio.open_nursery() as n:
            pa = await n.start(alice.connect, jobs["alice"], 0)
            pb = await n.start(bob.connect, jobs["bob"], 0)
            # each tunnel reaches its owner's container (the echo names the job)
            assert await answers(pa, jobs["alice"])
            assert await answers(pb, jobs["bob"])
            n.cancel_scope.cancel()

        # a buyer cannot reach the other's job through its own key
        with pytest.raises(Exception, match="belongs to"):
            await bob.status(jobs["alice"])


async def test_job_no_provider_fits_is_refused_before_payment(docker_engine, tmp_path):
    async with stack_for(docker_engine, tmp_path, providers=2) as s:
        assert s.user is not None
        c = Client(s.user, s.user_host, s.chain, ad_wait=3.0, poll_interval=0.3)
        await c.start()
        with trio.fail_after(20):  # the client hears the providers' ads
            while len(c.offers.fresh()) < 2:
                await trio.sleep(0.1)
        balance = await s.dev.client.balance(s.user.address)
        jobs_before = await c.ls()
        with pytest.raises(NoProviderFits, match="class"):
            await c.buy("h100", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, 1.0)
        with pytest.raises(NoProviderFits, match="free"):
            await c.buy("cpu", 2, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, 1.0)
        with pytest.raises(NoProviderFits, match="price"):
            await c.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, 1.0, max_price=1)
        assert await s.dev.client.balance(s.user.address) == balance  # not even gas
        assert await c.ls() == jobs_before


# Failure detection within a test's time: a provider silent for 4 s has failed; checkers
# submit 0.5 s apart. (Defaults: 30 s and 2 s.)
FAST_CHECKERS = CheckerSettings(
    popw_attempts=40, round_timeout=3.0, status_timeout=4.0, submit_backoff=0.5
)


async def test_killed_provider_job_moves_and_tunnel_works_again(docker_engine, tmp_path):
    async with stack_for(docker_engine, tmp_path, checker_settings=FAST_CHECKERS) as s:
        assert s.user is not None
        c = Client(s.user, s.user_host, s.chain, ad_wait=15.0, poll_interval=0.3)
        await c.start()
        await wait_standing(s, 2)
        job = await c.buy("cpu", 1, DEMO_HTTP_IMAGE, DEMO_HTTP_PORT, 1.0)
        dep = await c.wait_deployed(job, timeout=DEPLOY_TIMEOUT)
        victim = next(i for i, h in enumerate(s.providers) if h.address == dep.provider)

        async with trio.open_nursery() as n:
            port = await n.start(c.connect, job, 0)
            assert await answers(port, job)

            await s.kill_provider(victim)
            t_kill = time.monotonic()
            with trio.fail_after(30):  # ~12 s when it works (4 s timeout + quorum + deploy)
                while True:
                    try:
                        with trio.move_on_after(3):
                            if await answers(port, job):
                                break
                    except (OSError, trio.BrokenResourceError):
                        pass
                    await trio.sleep(0.5)
            moved_after = time.monotonic() - t_kill
            n.cancel_scope.cancel()

        onchain = await s.chain.get_job(job)
        assert onchain.failures >= 1 and onchain.round >= 1
        assert onchain.provider != dep.provider
        assert job in containers_of(docker_engine, s)
        print(f"job moved and answered {moved_after:.1f} s after the provider was killed")
