"""`kaisar client ...`: a thin CLI over ``node.client.api.Client``.

Where to connect comes from ``--devnet FILE`` (the JSON `kaisar devnet` writes:
rpc, deployment, bootstrap, network, demo_key) or from ``--rpc``, ``--deployment``,
``--bootstrap`` (repeatable), ``--network``; explicit flags win over the file. The
owner key is ``--key FILE`` (keystore; password from KAISAR_PASSWORD or a prompt),
else the devnet file's ``demo_key``. Heavy imports stay inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import UserError

JOB_HELP = "job id (from 'kaisar client buy' or 'kaisar client ls')"


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("network")
    g.add_argument(
        "--devnet",
        type=Path,
        help="JSON written by 'kaisar devnet' (rpc, deployment, bootstrap, network, demo_key)",
    )
    g.add_argument("--key", type=Path, help="owner keystore (default: the devnet file's demo_key)")
    g.add_argument("--rpc", help="chain JSON-RPC URL")
    g.add_argument("--deployment", type=Path, help="deployment file from 'kaisar chain deploy'")
    g.add_argument(
        "--bootstrap",
        action="append",
        default=None,
        metavar="MULTIADDR",
        help="peer to join through (repeatable)",
    )
    g.add_argument("--network", help="network name (default: devnet)")
    g.add_argument(
        "--wire-chain-id",
        type=int,
        help="chain id gossip is signed under (default: the deployment's)",
    )
    g.add_argument("--json", action="store_true", help="machine-readable output")


def _job_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad job id {text!r}: a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"bad job id {text!r}: not negative")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"bad port {text!r}: 1..65535")
    return value


UNITS = {"wei": 1, "gwei": 10**9, "eth": 10**18}


def parse_wei(text: str) -> int:
    """``123``, ``5gwei``, ``0.001eth`` -> wei."""
    from decimal import Decimal

    t = text.strip().lower()
    unit = next((u for u in ("gwei", "wei", "eth") if t.endswith(u)), "wei")
    number = t[: len(t) - len(unit)] if t.endswith(unit) else t
    try:
        value = Decimal(number) * UNITS[unit]
        # finite (not inf/nan), positive, whole, and below 2**256 before int() (1e999999999
        # would build a huge integer)
        whole = value.is_finite() and 0 < value < 1 << 256 and value == value.to_integral_value()
    except ArithmeticError:  # decimal's InvalidOperation, Overflow, ...
        raise argparse.ArgumentTypeError(
            f"bad amount {text!r}: e.g. 1000000000000000, 5gwei, 0.001eth"
        ) from None
    if not whole:
        raise argparse.ArgumentTypeError(f"bad amount {text!r}: a positive whole number of wei < 2**256")
    return int(value)


def register(sub: Any) -> None:
    client = sub.add_parser(
        "client", help="light client: buy a container, wait, connect, logs, close"
    )
    csub = client.add_subparsers(
        dest="client_cmd", metavar="CLIENT_COMMAND", parser_class=sub._parser_class
    )
    client.set_defaults(func=lambda args: (client.print_help(sys.stderr), 2)[1])

    buy = csub.add_parser(
        "buy", help="buy a container (checks gossip ads first; pays only if one fits)"
    )
    buy.add_argument("--gpu", required=True, metavar="CLASS", help="GPU class, e.g. cpu, a100")
    buy.add_argument("--count", type=int, default=1, help="GPUs (default 1)")
    buy.add_argument("--image", required=True, help="container image")
    buy.add_argument("--port", required=True, type=_port, help="container port to reach")
    buy.add_argument("--hours", required=True, type=float, help="duration paid in advance")
    buy.add_argument(
        "--max-price",
        type=parse_wei,
        metavar="WEI",
        help="most to pay per GPU-hour (wei, or 5gwei, 0.001eth)",
    )
    buy.add_argument(
        "--ad-wait", type=float, default=12.0, help="seconds to listen for ads (default 12)"
    )
    _common(buy)
    buy.set_defaults(func=cmd_buy)

    wait = csub.add_parser(
        "wait", help="wait until deployed; verifies the QC and provider signature"
    )
    wait.add_argument("job", type=_job_id, help=JOB_HELP)
    wait.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    _common(wait)
    wait.set_defaults(func=cmd_wait)

    conn = csub.add_parser(
        "connect", help="serve 127.0.0.1:PORT; each connection is a tunnel to the job"
    )
    conn.add_argument("job", type=_job_id, help=JOB_HELP)
    conn.add_argument("--local-port", required=True, type=_port, help="local TCP port to listen on")
    conn.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the deployment first"
    )
    _common(conn)
    conn.set_defaults(func=cmd_connect)

    ls = csub.add_parser("ls", help="this key's jobs")
    _common(ls)
    ls.set_defaults(func=cmd_ls)

    status = csub.add_parser("status", help="a job on chain and the provider's signed status")
    status.add_argument("job", type=_job_id, help=JOB_HELP)
    _common(status)
    status.set_defaults(func=cmd_status)

    logs = csub.add_parser("logs", help="the container's output")
    logs.add_argument("job", type=_job_id, help=JOB_HELP)
    logs.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until the job stops"
    )
    _common(logs)
    logs.set_defaults(func=cmd_logs)

    close = csub.add_parser("close", help="end the job now; refund of the unused part")
    close.add_argument("job", type=_job_id, help=JOB_HELP)
    _common(close)
    close.set_defaults(func=cmd_close)


# where to connect ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    rpc: str
    deployment: Path
    bootstrap: tuple[str, ...]
    network: str
    key: Path
    wire_chain_id: int | None


def resolve(args: argparse.Namespace) -> Target:
    """Flags over the devnet file; a clear error for whatever is still missing."""
    dev: dict[str, Any] = {}
    if args.devnet is not None:
        try:
            dev = json.loads(args.devnet.read_text())
        except OSError as exc:
            raise UserError(f"cannot read --devnet {args.devnet}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"--devnet {args.devnet} is not JSON: {exc}") from None
        if not isinstance(dev, dict):
            raise UserError(f"--devnet {args.devnet}: expected a JSON object")
    rpc = args.rpc or dev.get("rpc")
    deployment = args.deployment or (Path(dev["deployment"]) if dev.get("deployment") else None)
    key = args.key or (Path(dev["demo_key"]) if dev.get("demo_key") else None)
    bootstrap = tuple(args.bootstrap if args.bootstrap is not None else dev.get("bootstrap", []))
    network = args.network or dev.get("network") or "devnet"
    wire_chain_id = args.wire_chain_id or dev.get("wire_chain_id")
    missing = [
        n for n, v in (("--rpc", rpc), ("--deployment", deployment), ("--key", key)) if not v
    ]
    if missing:
        raise UserError(
            f"missing {', '.join(missing)}: pass them or --devnet FILE (written by 'kaisar devnet')"
        )
    assert rpc is not None and deployment is not None and key is not None
    if not deployment.exists():
        raise UserError(f"deployment file {deployment} not found (see 'kaisar chain deploy')")
    return Target(rpc, deployment, bootstrap, network, key, wire_chain_id)


def _run(args: argparse.Namespace, body: Any, *, needs_peers: bool = True) -> int:
    """Open a Client for ``args`` and run ``await body(client)`` under trio."""
    import trio

    from node.keys_commands import load_identity

    target = resolve(args)
    key = load_identity(target.key)

    async def main() -> int:
        from node.client.api import Client
        from node.eip712 import Domain

        wire = Domain(target.wire_chain_id) if target.wire_chain_id else None
        kwargs: dict[str, Any] = {}
        if getattr(args, "ad_wait", None) is not None:
            kwargs["ad_wait"] = args.ad_wait
        async with Client.open(
            key=key,
            rpc=target.rpc,
            deployment=target.deployment,
            bootstrap=target.bootstrap if needs_peers else (),
            network=target.network,
            wire_domain=wire,
            **kwargs,
        ) as client:
            return int(await body(client) or 0)

    return trio.run(main)


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if args.json else text, flush=True)


# handlers -----------------------------------------------------------------------------


def cmd_buy(args: argparse.Namespace) -> int:
    async def body(c: Any) -> None:
        job = await c.buy(args.gpu, args.count, args.image, args.port, args.hours, args.max_price)
        _emit(args, {"job_id": job}, f"job {job} bought; next: kaisar client wait {job}")

    return _run(args, body)


def cmd_wait(args: argparse.Namespace) -> int:
    def progress(line: str) -> None:
        if args.json:
            print(json.dumps({"progress": line}), flush=True)
        else:
            print(f"... {line}", file=sys.stderr, flush=True)

    async def body(c: Any) -> None:
        dep = await c.wait_deployed(args.job, timeout=args.timeout, progress=progress)
        _emit(
            args,
            {
                "job_id": dep.job_id,
                "provider": dep.provider,
                "round": dep.round,
                "peer": dep.peer,
                "state": dep.state,
                "qc_signers": list(dep.qc_signers),
                "signed_stake": dep.signed_stake,
                "total_stake": dep.total_stake,
            },
            f"job {dep.job_id} deployed at {dep.provider} (round {dep.round}); QC by "
            f"{len(dep.qc_signers)} checkers, {dep.signed_stake}/{dep.total_stake} stake; "
            f"next: kaisar client connect {dep.job_id} --local-port {dep.container_port}",
        )

    return _run(args, body)


def cmd_connect(args: argparse.Namespace) -> int:
    async def body(c: Any) -> None:
        import trio

        await c.wait_deployed(args.job, timeout=args.timeout)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(c.connect, args.job, args.local_port)
            _emit(
                args,
                {"job_id": args.job, "listening": f"127.0.0.1:{port}"},
                f"job {args.job}: listening on 127.0.0.1:{port} (Ctrl-C to stop)",
            )

    return _run(args, body)


def cmd_ls(args: argparse.Namespace) -> int:
    async def body(c: Any) -> None:
        jobs = await c.ls()
        if args.json:
            print(json.dumps([j.to_json() for j in jobs]))
            return
        if not jobs:
            print("no jobs for this key")
        for j in jobs:
            where = j.provider or "-"
            print(f"{j.job_id}\t{j.state}\t{j.gpu_class}x{j.count}\t{j.image}:{j.port}\t{where}")

    return _run(args, body, needs_peers=False)


def cmd_status(args: argparse.Namespace) -> int:
    async def body(c: Any) -> None:
        v = await c.status(args.job)
        ps = v.provider_status
        text = (
            f"job {v.job_id}: {v.state}, {v.gpu_class}x{v.count} {v.image}:{v.port}, "
            f"provider {v.provider or '-'} round {v.round}, deposit {v.deposit} wei"
            + (f", provider says {ps['state']}" if ps else "")
        )
        _emit(args, v.to_json(), text)

    return _run(args, body)


def cmd_logs(args: argparse.Namespace) -> int:
    async def body(c: Any) -> None:
        async for chunk in c.logs(args.job, follow=args.follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()

    return _run(args, body)


def cmd_close(args: argparse.Namespace) -> int:
    async def body(c: Any) -> None:
        r = await c.close(args.job)
        _emit(
            args,
            {
                "job_id": r.job_id,
                "refund": r.refund,
                "provider_paid": r.provider_paid,
                "tx_fee": r.tx_fee,
                "provider_state": r.provider_state,
            },
            f"job {r.job_id} closed: refund {r.refund} wei, provider paid {r.provider_paid} wei"
            + (f", container {r.provider_state} at the provider" if r.provider_state else ""),
        )

    return _run(args, body, needs_peers=False)
