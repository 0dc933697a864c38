"""``kaisar client connect``: a local TCP port whose connections are tunnels to a job.

Each accepted TCP connection becomes one owner-authorized ``/kaisar/tunnel/1`` stream
to the provider of the job's *current verified* deployment, and bytes are piped both
ways:

- bytes go through ``node.p2p.pipe.pipe``, the same pipe the provider runs: EOF on
  either side half-closes the other (the container still answers after the local EOF;
  HTTP/1.0 clients and ``nc -N`` rely on this), an error on either side ends both;
- the tunnel takes the provider's direct encrypted data path when it can, else the
  libp2p stream (``node.p2p.datapath``, ``open_tunnel(data_path=...)``);
- the route is re-read from the chain at most every ``recheck`` seconds, and at once
  when opening a tunnel fails; a new (round, provider) is verified like ``wait`` does
  before any connection goes there. So after a failover (``JobReassigned``, then a new
  ``JobAssigned``) new connections reach the new provider; connections open at the
  time of the failure end with it.

Error rules: a connection whose tunnel cannot be opened after one re-route is closed
and logged (the listener keeps serving); a job that ended on chain stops the service
with JobEnded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from node.chain.api import JOB_ASSIGNED, JOB_OPEN
from node.client.errors import ClientError, JobEnded
from node.client.verify import Deployment
from node.p2p.host import P2PError
from node.p2p.pipe import pipe
from node.roles.provider import client as pclient

if TYPE_CHECKING:
    from node.client.api import Client

log = logging.getLogger("kaisar.client.connect")

RECHECK_S = 1.0
REROUTE_TIMEOUT_S = 120.0


async def pipe_local(tcp: trio.SocketStream, tunnel: pclient.TunnelStream) -> tuple[int, int]:
    """Copy bytes with the one pipe both tunnel ends use (``node.p2p.pipe``): EOF on
    either side half-closes the other, an error ends both. Returns (bytes up, down)."""
    st = await pipe(tcp, tunnel.channel)
    return st.a_to_b, st.b_to_a


class Forwarder:
    def __init__(self, client: Client, job_id: int, *, recheck: float = RECHECK_S) -> None:
        self.client = client
        self.job_id = job_id
        self.recheck = recheck
        self.route: Deployment | None = None
        self._checked_at = -1e9
        self._lock = trio.Lock()
        self.connections = 0
        self.refused = 0  # connections closed because no tunnel could be opened

    async def current(self, *, force: bool = False) -> Deployment:
        """The verified deployment new connections go to (re-verified after a move)."""
        async with self._lock:
            now = trio.current_time()
            if self.route is not None and not force and now - self._checked_at < self.recheck:
                return self.route
            job = await self.client.chain.get_job(self.job_id)
            if job.state not in (JOB_OPEN, JOB_ASSIGNED):
                raise JobEnded(f"job {self.job_id} ended on chain; nothing to connect to")
            r = self.route
            if (
                r is None
                or job.state != JOB_ASSIGNED
                or (job.round, job.provider) != (r.round, r.provider)
            ):
                if r is not None:
                    log.info(
                        "event=job_moved job=%d from=%s round=%d", self.job_id, r.provider, r.round
                    )
                self.route = None
                r = await self.client.wait_deployed(self.job_id, timeout=REROUTE_TIMEOUT_S)
                self.route = r
                log.info(
                    "event=route job=%d provider=%s round=%d peer=%s",
                    self.job_id,
                    r.provider,
                    r.round,
                    r.peer,
                )
            self._checked_at = trio.current_time()
            return r

    async def serve(
        self, port: int, *, host: str = "127.0.0.1", task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Verify the deployment, then listen (a job that is not deployed is refused).

        A verification this client made less than ``recheck`` s ago (``wait`` just
        before ``connect``) is the route as it stands: the same age a route has
        between two connections, so no chain read here."""
        recent = self.client.recently_verified(self.job_id, self.recheck)
        if recent is not None:
            self.route, self._checked_at = recent
        else:
            await self.current(force=True)
        await self.serve_listening(port, host=host, task_status=task_status)

    async def serve_listening(
        self, port: int, *, host: str = "127.0.0.1", task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` until cancelled; ``task_status.started(bound_port)``."""
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ClientError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pick another --local-port"
            ) from None
        bound = listeners[0].socket.getsockname()[1]
        log.info("event=connect_listening job=%d addr=%s:%d", self.job_id, host, bound)
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            await trio.serve_listeners(self.handle, listeners, handler_nursery=nursery)

    async def handle(self, tcp: trio.SocketStream) -> None:
        """One local connection -> one tunnel; always closes ``tcp``."""
        self.connections += 1
        try:
            for attempt in range(2):
                try:
                    route = await self.current(force=attempt > 0)
                except ClientError as exc:  # job ended, or the new route does not verify
                    self.refused += 1
                    log.warning("event=connection_refused job=%d reason=%s", self.job_id, exc)
                    return
                try:
                    peer = pclient_peer(route)
                    # A route verified from gossip never dialled the provider, and a bare
                    # peer ID has no address to dial: reach it with its ad's addresses.
                    await self.client.reach(route.provider)
                    async with pclient.open_tunnel(
                        self.client.host,
                        peer,
                        self.client.identity,
                        self.client.chain.domain,
                        self.job_id,
                    ) as tunnel:
                        up, down = await pipe_local(tcp, tunnel)
                        log.debug(
                            "event=connection_closed job=%d up=%d down=%d", self.job_id, up, down
                        )
                        return
                except (pclient.TunnelRefused, P2PError) as exc:
                    if attempt:
                        self.refused += 1
                    log.info(
                        "event=tunnel_failed job=%d attempt=%d err=%s", self.job_id, attempt, exc
                    )
        finally:
            with trio.CancelScope(shield=True):
                await tcp.aclose()


def pclient_peer(route: Deployment) -> Any:
    from libp2p.peer.id import ID

    return ID.from_base58(route.peer)
