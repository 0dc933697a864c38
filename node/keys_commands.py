"""`kaisar keys new|show`: create and inspect the node's one key (encrypted keystore)."""

from __future__ import annotations

import json
from pathlib import Path

from node.errors import UserError
from node.identity import Identity, IdentityError, load_keystore, read_password, save_keystore


def register(sub) -> None:
    keys = sub.add_parser("keys", help="create and inspect node/user keys (keystore v3)")
    ksub = keys.add_subparsers(dest="keys_cmd", metavar="KEYS_COMMAND", parser_class=sub._parser_class)
    keys.set_defaults(func=lambda args: (keys.print_help(), 2)[1])

    new = ksub.add_parser("new", help="generate a key; write an encrypted keystore (mode 0600)")
    new.add_argument("--out", required=True, type=Path, help="keystore file to create")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.add_argument("--json", action="store_true")
    new.set_defaults(func=cmd_new)

    show = ksub.add_parser("show", help="print the address and libp2p peer ID of a keystore")
    show.add_argument("file", type=Path)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)


def load_identity(path: Path) -> Identity:
    """The CLI's way to open a keystore: password from KAISAR_PASSWORD or a prompt."""
    try:
        return load_keystore(path, read_password(f"Password for {path}: "))
    except IdentityError as exc:
        raise UserError(str(exc)) from None


def _print(ident: Identity, as_json: bool, path: Path) -> None:
    info = {"address": ident.address, "peer_id": ident.peer_id.to_base58(), "file": str(path)}
    if as_json:
        print(json.dumps(info))
    else:
        print(f"address: {info['address']}\npeer_id: {info['peer_id']}")


def cmd_new(args) -> int:
    ident = Identity.generate()
    try:
        if args.out.exists() and not args.force:
            raise IdentityError(f"{args.out} exists; use --force to overwrite")
        save_keystore(ident, args.out, read_password("New password: ", confirm=True), overwrite=args.force)
    except IdentityError as exc:
        raise UserError(str(exc)) from None
    _print(ident, args.json, args.out)
    return 0


def cmd_show(args) -> int:
    _print(load_identity(args.file), args.json, args.file)
    return 0
