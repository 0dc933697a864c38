"""`kaisar popw selftest|inventory` and `kaisar bench popw` through the real CLI parser."""

import json

import pytest

from cli import main

TINY = """
[popw]
target_seconds = 0.05
min_efficiency = 0.5
network_allowance_seconds = 5.0
openings = 16

[classes.cpu]
tflops = 0.002
memory_gb = 1
n = 64

[classes.fantasy]
tflops = 10000.0
memory_gb = 1000
n = 16384
stride = 1024
"""


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "classes.toml"
    p.write_text(TINY)
    return str(p)


def test_selftest_json(tiny, capsys):
    assert main(["popw", "selftest", "--json", "--classes", tiny]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "numpy" and out["verdict"] == "pass"
    assert out["challenge_class"] == "cpu" and out["n"] == 64 and out["qualifies_for"] == "cpu"
    assert out["effective_tflops"] > 0 and out["prover_s"] > 0


def test_selftest_text(tiny, capsys):
    assert main(["popw", "selftest", "--classes", tiny]) == 0
    text = capsys.readouterr().out
    assert "backend:   numpy" in text and "qualifies: cpu" in text


def test_selftest_bad_table_is_one_line_error(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text("[popw]\ntarget_seconds = 'fast'\n")
    assert main(["popw", "selftest", "--classes", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "target_seconds" in err


def test_inventory_json(capsys):
    assert main(["popw", "inventory", "--json"]) == 0
    assert "count" in json.loads(capsys.readouterr().out)


def test_bench_json_fields(tiny, capsys):
    assert (
        main(["bench", "popw", "--json", "--classes", tiny, "--sizes", "64,128", "--reps", "1"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [r["n"] for r in out["results"]] == [64, 128]
    for r in out["results"]:
        # ratios only: tiny sizes on a shared machine give noisy values
        assert r["prover_over_matmul"] > 0 and r["verifier_over_prover"] > 0
        assert r["k"] == 16
        # the numpy baseline cut into the prover's row bands, next to the BLAS's own
        assert r["banded_matmul_s"] > 0 and r["prover_over_banded_matmul"] > 0
        assert r["bands"] >= 1
        # committed at the stride a checker sends at this size, every step shown beside
        assert r["stride"] == 16 and r["rounds"] % 16 == 0
        assert r["prover_over_matmul_stride_1"] > 0
    assert 0 < out["duty_cycle"]["fraction"] < 1


def test_bench_bad_sizes(tiny, capsys):
    assert main(["bench", "popw", "--classes", tiny, "--sizes", "64,x"]) == 2
    assert main(["bench", "popw", "--classes", tiny, "--sizes", "48"]) == 2
