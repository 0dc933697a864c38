"""`kaisar explorer` and `kaisar bench explorer` as a user runs them."""

from __future__ import annotations

import json

import cli


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(rc, err, text):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kaisar: error: "), err
    assert text in lines[0], lines[0]


def test_missing_config_is_one_line(capsys, tmp_path):
    rc, _, err = run(capsys, "explorer", "--config", str(tmp_path / "nope.toml"))
    one_error(rc, err, "not found")


def test_bad_explorer_key_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "e.toml"
    cfg.write_text("[explorer]\nhttp_port = 70000\n")
    rc, _, err = run(capsys, "explorer", "--config", str(cfg))
    one_error(rc, err, "explorer.http_port: expected 0..65535")
    cfg.write_text("[explorer]\ncolour = 1\n")
    rc, _, err = run(capsys, "explorer", "--config", str(cfg))
    one_error(rc, err, "explorer.colour: unknown key")


def test_shipped_config_loads():
    from node.config import load

    cfg = load(cli.__file__.rsplit("/", 1)[0] + "/configs/explorer.toml")
    assert cfg.explorer.http_port == 8080 and cfg.metrics.port > 0


def test_bench_json(capsys):
    rc, out, _ = run(capsys, "bench", "explorer", "--ads", "300", "--providers", "10", "--json")
    result = json.loads(out)
    assert result["indexed"] == 300 and result["provider_rows"] == 10
    assert result["ads_per_s"] > 0 and rc == (0 if result["ok"] else 1)
