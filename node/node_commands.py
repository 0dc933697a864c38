"""`kaisar node --role provider|checker --config FILE`: run a network node."""

from __future__ import annotations

from pathlib import Path

from node.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("node", help="run a provider or checker node")
    p.add_argument("--role", required=True, choices=["provider", "checker"])
    p.add_argument("--config", required=True, type=Path, help="TOML config (see configs/)")
    p.add_argument("--key", type=Path, help="keystore file (default: node.key_file in config)")
    p.set_defaults(func=cmd_node)


def cmd_node(args) -> int:
    import trio

    from node import config as config_mod
    from node.keys_commands import load_identity
    from node.runner import run_until_signal

    cfg = config_mod.load(args.config)
    key = args.key or (cfg.path(cfg.node.key_file) if cfg.node.key_file else None)
    if key is None:
        raise UserError("no key: pass --key FILE or set node.key_file in the config")
    identity = load_identity(key)
    try:
        trio.run(run_until_signal, _main, cfg, identity, args.role)
    except OSError as exc:
        raise UserError(f"network error: {exc}") from None
    return 0


async def _main(cfg, identity, role) -> None:
    from node.p2p.host import P2PError
    from node.runner import run_node

    services = []
    if role == "provider":
        from node.roles.provider.node import provider_service

        services.append(await provider_service(cfg))
    elif role == "checker":
        from node.roles.checker.node import checker_service

        services.append(await checker_service(cfg))
    try:
        await run_node(cfg, identity, role=role, role_services=services)
    except P2PError as exc:
        raise UserError(str(exc)) from None
