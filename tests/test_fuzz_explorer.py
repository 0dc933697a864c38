"""Fuzzing every explorer HTTP parameter, past test_explorer_api's query fuzz.

Every route, every parameter it accepts (and unknown ones), with values aimed at the
parsers: numbers at and past the bounds, unicode digits, regex edge cases (a trailing
newline after a valid address), percent-encoded bytes, repeated keys; path ids the same
way; and other HTTP methods. Property: 200, 400 (with ``{"error": "<param>: ..."}``),
404 or 405; never a 500. Counts: docs/FUZZING.md.
"""

from __future__ import annotations

from urllib.parse import quote

from fuzzing import fuzz
from hypothesis import event, given
from hypothesis import strategies as st
from test_explorer_api import world  # noqa: F401 - the indexed world fixture

ROUTES = {
    "/api/providers": ["limit", "offset", "gpu_class", "verified", "accepting", "sort", "order"],
    "/api/checkers": ["limit", "offset", "registered"],
    "/api/jobs": ["limit", "offset", "state", "provider", "owner"],
    "/api/messages": ["limit", "offset", "type", "signer"],
    "/api/stats": [],
    "/api/openapi.json": [],
    "/": [],
}
ADDR = "0x" + "ab" * 20
EDGE = [
    "", " ", "0", "1", "-1", "500", "501", "2147483648", "999999999999", "9999999999999", "1e3",
    "0x10", "١٢", "٣", "+1", "1 ", "true", "false", "True", "asc", "desc", "open", "assigned",
    ADDR, ADDR + "\n", ADDR.upper(), "0X" + "ab" * 20, ADDR[:-1], ADDR + "0", "\x00", "%00",
    "gpus_total", "last_seen", "h100", "x" * 33, "\u202e", "\ud7ff", "🙂" * 9,
]  # fmt: skip
values = st.sampled_from(EDGE) | st.text(max_size=60) | st.integers(-(10**30), 10**30).map(str)


@st.composite
def requests(draw):
    path = draw(st.sampled_from(sorted(ROUTES)))
    if draw(st.integers(0, 3)) == 0:  # an id route
        base = draw(st.sampled_from(["/api/providers/", "/api/jobs/"]))
        pid = draw(
            st.sampled_from([ADDR, ADDR + "\n", "16Uiu2HAm" + "x" * 40, "1", "0" * 80, "1" * 79, "-1", "١"])
            | st.text(min_size=1, max_size=90)
        )
        path = base + quote(pid, safe="")
        names = []
    else:
        names = ROUTES[path]
    keys = st.sampled_from(names + ["x", "LIMIT"]) if names else st.sampled_from(["x", "limit"])
    params = draw(st.lists(st.tuples(keys, values), max_size=5))
    method = draw(st.sampled_from(["GET"] * 6 + ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"]))
    return method, path, params


@fuzz(300)
@given(req=requests())
def test_every_route_and_parameter_is_never_a_500(world, req):  # noqa: F811
    client = world[0]
    method, path, params = req
    r = client.request(method, path, params=params)
    event(f"{method} {r.status_code}")
    assert r.status_code in (200, 400, 404, 405), (req, r.status_code, r.text[:300])
    if r.status_code == 400 and method != "HEAD":  # HEAD: no body
        err = r.json()["error"]
        assert ": " in err and "\n" not in err, err


def test_address_with_a_trailing_newline_is_a_400(world):  # noqa: F811
    """``re.match(r"^...$")`` accepts a trailing newline; the address then reached
    to_checksum_address (a 500 if it raised, a wrong key if it did not)."""
    client = world[0]
    for path, params in (
        ("/api/providers/" + quote(ADDR + "\n", safe=""), {}),
        ("/api/jobs", {"owner": ADDR + "\n"}),
        ("/api/messages", {"signer": ADDR + "\n"}),
    ):
        r = client.get(path, params=params)
        assert r.status_code == 400, (path, params, r.status_code, r.text)


def test_image_refs_gpu_ids_and_env_keys_refuse_a_trailing_newline():
    """Same regex edge as above, in the container runtime's request checks."""
    import pytest

    from node.roles.provider.images import is_valid_image_ref
    from node.roles.provider.runtime import ContainerError, Limits, validate_request

    assert is_valid_image_ref("kaisar/busybox") and not is_valid_image_ref("kaisar/busybox\n")
    validate_request(1, "kaisar/busybox", 80, ["GPU-1"], Limits(), {"A": "b"})
    for gpus, env in ((["GPU-1\n"], {}), ([], {"A\n": "b"})):
        with pytest.raises(ContainerError):
            validate_request(1, "kaisar/busybox", 80, gpus, Limits(), env)
