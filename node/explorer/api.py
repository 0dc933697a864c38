"""The explorer's HTTP API (Starlette; served under trio by Hypercorn, see service.py).

Every list endpoint takes ``limit`` (1..500, default 50) and ``offset`` (>= 0) and
returns ``{"items": [...], "total": N, "limit": L, "offset": O}``. Query parameters are
checked strictly: an unknown parameter or a bad value is a 400 with
``{"error": "<param>: <what was expected>"}``; nothing a client sends gives a 500
(property-tested). The OpenAPI description is at ``/api/openapi.json``.
"""

from __future__ import annotations

import builtins
import json
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from eth_utils import to_checksum_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from node.explorer import metrics
from node.explorer.store import JOB_STATES, Store

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_OFFSET = 1 << 31
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
PEER_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{20,100}$")
CLASS_RE = re.compile(r"^[\x21-\x7e]{1,32}$")
GOSSIP_WINDOW = 60.0  # seconds over which the gossip rate is measured
VERIFIED = ("pass", "certified")
FINISHED_STATUS = ("stopped", "failed")


class BadRequest(Exception):
    pass


# parameters ------------------------------------------------------------------------


class Params:
    """Strict query parsing: each getter validates one parameter; unknown ones are refused."""

    def __init__(self, request: Request, allowed: set[str]) -> None:
        self.q = request.query_params
        for key in self.q.keys():
            if key not in allowed:
                raise BadRequest(
                    f"{key}: unknown parameter (allowed: {', '.join(sorted(allowed))})"
                )
            if len(self.q.getlist(key)) > 1:
                raise BadRequest(f"{key}: given more than once")

    def int(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.q.get(name)
        if raw is None:
            return default
        if not re.fullmatch(r"[0-9]{1,12}", raw):
            raise BadRequest(f"{name}: expected an integer {lo}..{hi}")
        value = int(raw)
        if not lo <= value <= hi:
            raise BadRequest(f"{name}: expected an integer {lo}..{hi}")
        return value

    def bool(self, name: str) -> bool | None:
        raw = self.q.get(name)
        if raw is None:
            return None
        if raw not in ("true", "false"):
            raise BadRequest(f"{name}: expected true or false")
        return raw == "true"

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        raw = self.q.get(name)
        if raw is None:
            return default
        if raw not in choices:
            raise BadRequest(f"{name}: expected one of {', '.join(choices)}")
        return raw

    def address(self, name: str) -> str | None:
        raw = self.q.get(name)
        if raw is None:
            return None
        if not ADDRESS_RE.fullmatch(raw):
            raise BadRequest(f"{name}: expected a 0x-prefixed 20-byte hex address")
        return to_checksum_address(raw)

    def pattern(self, name: str, regex: re.Pattern, what: str) -> str | None:
        raw = self.q.get(name)
        if raw is None:
            return None
        if not regex.fullmatch(raw):  # not .match: "$" also matches before a final newline
            raise BadRequest(f"{name}: expected {what}")
        return raw

    def page(self) -> tuple[builtins.int, builtins.int]:
        return self.int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT), self.int("offset", 0, 0, MAX_OFFSET)


PAGE = {"limit", "offset"}


def paged(
    store: Store, sql: str, args: list, order: str, limit: int, offset: int, row=None
) -> dict:
    total = store.db.execute(f"SELECT COUNT(*) FROM ({sql})", args).fetchone()[0]
    items = store.query(f"{sql} ORDER BY {order} LIMIT ? OFFSET ?", [*args, limit, offset])
    if row is not None:
        items = [row(i) for i in items]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


# rows -------------------------------------------------------------------------------


def provider_row(r: dict) -> dict:
    r = dict(r)
    for key in ("addrs", "inventory"):
        r[key] = json.loads(r[key])
    r["accepting"] = bool(r["accepting"])
    r["verified"] = r["popw_verdict"] in VERIFIED
    r["advertised"] = r.pop("ad_seq") >= 0
    r["ad_expiry"] = r["ad_expiry"] or None
    return r


def checker_row(r: dict) -> dict:
    r = dict(r)
    r["registered"] = bool(r["registered"])
    r["last_seen"] = r["last_seen"] or None
    return r


PROVIDER_SQL = "SELECT * FROM providers"
CHECKER_SQL = (
    "SELECT c.*,"
    " (SELECT COUNT(*) FROM messages m WHERE m.signer = c.address AND m.topic = 'attest/1')"
    " AS attestations,"
    " (SELECT COUNT(*) FROM messages m WHERE m.signer = c.address AND m.topic = 'assign/1')"
    " AS assignment_votes"
    " FROM checkers c"
)


# handlers ---------------------------------------------------------------------------


def create_app(store: Store, *, live: Callable[[], dict] | None = None) -> Starlette:
    """The ASGI app over ``store``; ``live()`` adds host facts (peers, rejected gossip)."""

    def providers(request: Request) -> dict:
        p = Params(request, PAGE | {"gpu_class", "verified", "accepting", "sort", "order"})
        limit, offset = p.page()
        where: list[str] = []
        args: list[object] = []
        gpu_class = p.pattern("gpu_class", CLASS_RE, "a GPU class name (1..32 printable chars)")
        if gpu_class is not None:
            where.append("gpu_class = ?")
            args.append(gpu_class)
        verified = p.bool("verified")
        if verified is not None:
            where.append(("" if verified else "NOT ") + "popw_verdict IN ('pass', 'certified')")
        accepting = p.bool("accepting")
        if accepting is not None:
            where.append("accepting = ?")
            args.append(int(accepting))
        sort = p.choice("sort", ("last_seen", "gpus_total", "gpus_free", "address"), "last_seen")
        order = p.choice("order", ("asc", "desc"), "desc")
        sql = PROVIDER_SQL + (" WHERE " + " AND ".join(where) if where else "")
        return paged(store, sql, args, f"{sort} {order}, address", limit, offset, provider_row)

    def provider(request: Request) -> dict:
        Params(request, set())
        pid = request.path_params["id"]
        if ADDRESS_RE.fullmatch(pid):
            rows = store.query(
                "SELECT * FROM providers WHERE address = ?", (to_checksum_address(pid),)
            )
        elif PEER_RE.fullmatch(pid):
            rows = store.query("SELECT * FROM providers WHERE peer = ?", (pid,))
        else:
            raise BadRequest("id: expected a 0x address or a libp2p peer id")
        if not rows:
            raise NotFound(f"provider {pid} not indexed")
        out = provider_row(rows[0])
        out["jobs"] = store.query(
            "SELECT job_id, state, status, round FROM jobs WHERE provider = ?"
            " ORDER BY job_num DESC LIMIT 50",
            (out["address"],),
        )
        out["ads_seen"] = store.db.execute(
            "SELECT COUNT(*) FROM messages WHERE signer = ? AND topic = 'ads/1'", (out["address"],)
        ).fetchone()[0]
        return out

    def checkers(request: Request) -> dict:
        p = Params(request, PAGE | {"registered"})
        limit, offset = p.page()
        registered = p.bool("registered")
        sql, args = CHECKER_SQL, []
        if registered is not None:
            sql += " WHERE c.registered = ?"
            args.append(int(registered))
        return paged(store, sql, args, "last_seen DESC, address", limit, offset, checker_row)

    def jobs(request: Request) -> dict:
        p = Params(request, PAGE | {"state", "provider", "owner"})
        limit, offset = p.page()
        where: list[str] = []
        args: list[object] = []
        state = p.choice("state", tuple(JOB_STATES.values()))
        if state is not None:
            where.append("state = ?")
            args.append(state)
        for name in ("provider", "owner"):
            value = p.address(name)
            if value is not None:
                where.append(f"{name} = ?")
                args.append(value)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        return paged(store, sql, args, "job_num DESC", limit, offset)

    def job(request: Request) -> dict:
        Params(request, set())
        jid = request.path_params["id"]
        if not re.fullmatch(r"[0-9]{1,78}", jid) or int(jid) >= 1 << 256:
            raise BadRequest("id: expected a job id (decimal uint256)")
        jid = str(int(jid))
        rows = store.query("SELECT * FROM jobs WHERE job_id = ?", (jid,))
        if not rows:
            raise NotFound(f"job {jid} not indexed")
        out = rows[0]
        out["status_events"] = store.query(
            "SELECT state, reason, provider, issued FROM status_events WHERE job_id = ?"
            " ORDER BY issued",
            (jid,),
        )
        events = store.query(
            "SELECT name, block_number, args, lower(hex(tx_hash)) AS tx FROM chain_events"
            " WHERE json_extract(args, '$.job_id') IN (?, ?) ORDER BY block_number, log_index",
            (int(jid) if int(jid) < 2**53 else jid, jid),
        )
        for e in events:
            e["args"] = json.loads(e["args"])
            e["tx"] = "0x" + e["tx"]
        out["chain_events"] = events
        return out

    def stats(request: Request) -> dict:
        Params(request, set())
        now = time.time()
        by_class = {
            r["gpu_class"]: r["gpus"]
            for r in store.query(
                "SELECT gpu_class, SUM(gpus_total) AS gpus FROM providers"
                " WHERE ad_seq >= 0 GROUP BY gpu_class ORDER BY gpu_class"
            )
        }
        n_prov = store.count("providers")
        verified = store.db.execute(
            "SELECT COUNT(*) FROM providers WHERE popw_verdict IN ('pass', 'certified')"
        ).fetchone()[0]
        active = store.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'assigned' AND status NOT IN (?, ?)",
            FINISHED_STATUS,
        ).fetchone()[0]
        recent = store.db.execute(
            "SELECT COUNT(*) FROM messages WHERE received >= ?", (now - GOSSIP_WINDOW,)
        ).fetchone()[0]
        by_type = {
            r["type"]: r["n"]
            for r in store.query("SELECT type, COUNT(*) AS n FROM messages GROUP BY type")
        }
        out = {
            "time": now,
            "providers": n_prov,
            "checkers": store.count("checkers"),
            "gpus_by_class": by_class,
            "gpus_total": sum(by_class.values()),
            "verified_providers": verified,
            "verified_share": verified / n_prov if n_prov else 0.0,
            "jobs": store.count("jobs"),
            "active_jobs": active,
            "gossip_rate": recent / GOSSIP_WINDOW,
            "gossip_window_s": GOSSIP_WINDOW,
            "messages_indexed": sum(by_type.values()),
            "messages_by_type": by_type,
            "chain_events": store.count("chain_events"),
            "chain_block": int(store.get_meta("chain_block", "-1") or -1),
        }
        if live is not None:
            out.update(live())
        metrics.PROVIDERS.set(n_prov)
        metrics.CHECKERS.set(out["checkers"])
        return out

    def messages(request: Request) -> dict:
        p = Params(request, PAGE | {"type", "signer"})
        limit, offset = p.page()
        where: list[str] = []
        args: list[object] = []
        mtype = p.pattern("type", re.compile(r"^[A-Za-z0-9_]{1,64}$"), "a message type name")
        if mtype is not None:
            where.append("type = ?")
            args.append(mtype)
        signer = p.address("signer")
        if signer is not None:
            where.append("signer = ?")
            args.append(signer)
        sql = (
            "SELECT '0x' || lower(hex(digest)) AS digest, type, topic, signer, seq, issued,"
            " expiry, body, received FROM messages"
            + (" WHERE " + " AND ".join(where) if where else "")
        )

        def row(r: dict) -> dict:
            r["body"] = json.loads(r["body"])
            return r

        return paged(store, sql, args, "received DESC", limit, offset, row)

    def openapi(request: Request) -> dict:
        return OPENAPI

    def wrap(name: str, fn: Callable[[Request], Any]) -> Callable:
        async def endpoint(request: Request) -> Response:
            try:
                resp: Response = JSONResponse(fn(request))
            except BadRequest as exc:
                resp = JSONResponse({"error": str(exc)}, status_code=400)
            except NotFound as exc:
                resp = JSONResponse({"error": str(exc)}, status_code=404)
            metrics.HTTP_REQUESTS.labels(name, str(resp.status_code)).inc()
            return resp

        return endpoint

    async def index(request: Request) -> Response:
        return HTMLResponse(PAGE_HTML)

    routes = [
        Route("/", index),
        Route("/api/providers", wrap("providers", providers)),
        Route("/api/providers/{id}", wrap("provider", provider)),
        Route("/api/checkers", wrap("checkers", checkers)),
        Route("/api/jobs", wrap("jobs", jobs)),
        Route("/api/jobs/{id}", wrap("job", job)),
        Route("/api/stats", wrap("stats", stats)),
        Route("/api/messages", wrap("messages", messages)),
        Route("/api/openapi.json", wrap("openapi", openapi)),
    ]
    return Starlette(routes=routes)


class NotFound(Exception):
    pass


PAGE_HTML = resources.files("node.explorer").joinpath("index.html").read_text()


# OpenAPI ------------------------------------------------------------------------------


def _q(name: str, schema: dict, desc: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


def _path(name: str, desc: str) -> dict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": desc,
    }


_PAGE_PARAMS = [
    _q(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "page size",
    ),
    _q("offset", {"type": "integer", "minimum": 0, "default": 0}, "rows to skip"),
]
_BOOL = {"type": "string", "enum": ["true", "false"]}
_ADDR = {"type": "string", "pattern": ADDRESS_RE.pattern}
_ERR = {
    "description": "bad parameter",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_PAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": {"type": "object"}},
        "total": {"type": "integer"},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
    },
}


def _op(summary: str, params: list, schema: dict, *, not_found: bool = False) -> dict:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
        "400": _ERR,
    }
    if not_found:
        responses["404"] = {"description": "not indexed"}
    return {"get": {"summary": summary, "parameters": params, "responses": responses}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Kaisar explorer API",
        "version": "1",
        "description": "Index of the Kaisar network's signed gossip and contract events.",
    },
    "paths": {
        "/api/providers": _op(
            "Providers (latest ad, GPUs, class, price, PoPW standing)",
            [
                *_PAGE_PARAMS,
                _q("gpu_class", {"type": "string", "maxLength": 32}, "only this GPU class"),
                _q("verified", _BOOL, "PoPW verified (pass or certified) or not"),
                _q("accepting", _BOOL, "accepting deployments"),
                _q(
                    "sort",
                    {"type": "string", "enum": ["last_seen", "gpus_total", "gpus_free", "address"]},
                    "sort key",
                ),
                _q("order", {"type": "string", "enum": ["asc", "desc"]}, "sort order"),
            ],
            _PAGE_SCHEMA,
        ),
        "/api/providers/{id}": _op(
            "One provider, with its jobs",
            [_path("id", "0x address or libp2p peer id")],
            {"type": "object"},
            not_found=True,
        ),
        "/api/checkers": _op(
            "Checkers (stake, registration, attestations and assignment votes signed)",
            [*_PAGE_PARAMS, _q("registered", _BOOL, "registered on chain")],
            _PAGE_SCHEMA,
        ),
        "/api/jobs": _op(
            "Jobs and their assignments",
            [
                *_PAGE_PARAMS,
                _q("state", {"type": "string", "enum": list(JOB_STATES.values())}, "escrow state"),
                _q("provider", _ADDR, "assigned provider"),
                _q("owner", _ADDR, "job owner"),
            ],
            _PAGE_SCHEMA,
        ),
        "/api/jobs/{id}": _op(
            "One job, with status events and chain events",
            [_path("id", "job id (decimal)")],
            {"type": "object"},
            not_found=True,
        ),
        "/api/stats": _op(
            "Network overview: GPUs by class, verified share, active jobs, gossip rate",
            [],
            {"type": "object"},
        ),
        "/api/messages": _op(
            "Indexed gossip messages, newest first",
            [
                *_PAGE_PARAMS,
                _q("type", {"type": "string"}, "message type name"),
                _q("signer", _ADDR, "signer address"),
            ],
            _PAGE_SCHEMA,
        ),
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}
