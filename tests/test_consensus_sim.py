"""The deterministic simulation: real rules and signatures under crashes and Byzantine checkers.

The last tests weaken one rule and require the simulation to notice: a simulation that
cannot fail proves nothing.
"""

from __future__ import annotations

import json

import pytest

from cli import main
from node.consensus import assignment as rules
from node.consensus import qc, sim

SCENARIOS = {s.name: s for s in sim.default_scenarios()}
QUICK_JOBS = 12


@pytest.fixture(scope="module")
def quick_report():
    return sim.run_all(QUICK_JOBS, seed=7)


def test_quick_run_is_safe_and_live(quick_report):
    r = quick_report
    assert r["rounds"] == QUICK_JOBS
    assert r["safety_violations"] == 0
    assert r["liveness_failures"] == 0
    assert r["evidence_missed"] == 0
    names = {s["name"] for s in r["scenarios"]}
    assert names == set(SCENARIOS)
    for s in r["scenarios"]:
        assert {"name", "byzantine", "crashed", "safety_violations", "liveness_failures"} <= set(s)
        if not s["byzantine"]:
            assert s["assigned"] == s["jobs"], s["name"]


def test_scenarios_cover_the_fault_model(quick_report):
    by = {s["name"]: s for s in quick_report["scenarios"]}
    # f crashed of n = 3f + 1, for n = 4 and n = 7, assigned within the round bound
    assert by["crash-1-of-4"]["crashed"] == 1 and by["crash-2-of-7"]["crashed"] == 2
    for name in ("crash-1-of-4", "crash-2-of-7"):
        assert by[name]["max_rounds_to_assign"] <= SCENARIOS[name].round_bound
    behaviours = {b for s in quick_report["scenarios"] for b in s["behaviours"]}
    assert behaviours == set(sim.BEHAVIOURS)
    # every AssignVote equivocation that reached an honest checker produced evidence
    assert by["equivocating-voter-7"]["equivocations"] > 0
    for s in quick_report["scenarios"]:
        assert s["evidence_detected"] == s["equivocations"], s["name"]
    # equivocating leaders' split proposals reached honest checkers (and were refused)
    for name in ("equivocating-leader-4", "equivocating-leader-7", "mixed-byzantine-7"):
        assert by[name]["equivocating_proposals"] > 0
    # forged and replayed messages were offered and refused
    assert by["forged-signatures-4"]["rejected_messages"] > 0
    assert by["replayed-votes-4"]["rejected_messages"] > 0


def test_same_seed_same_report():
    a = sim.run_scenario(SCENARIOS["mixed-byzantine-7"], 6, seed=3)
    b = sim.run_scenario(SCENARIOS["mixed-byzantine-7"], 6, seed=3)
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_cli_json(capsys):
    assert main(["sim", "consensus", "--rounds", "2", "--seed", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] == 2 and report["safety_violations"] == 0
    assert report["liveness_failures"] == 0 and len(report["scenarios"]) == len(SCENARIOS)


def test_cli_rejects_bad_rounds(capsys):
    assert main(["sim", "consensus", "--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err


# the simulation catches weakened rules ----------------------------------------------------


def test_half_quorum_is_caught(monkeypatch):
    monkeypatch.setattr(qc, "QUORUM_NUMERATOR", 1)
    monkeypatch.setattr(qc, "QUORUM_DENOMINATOR", 2)
    r = sim.run_scenario(SCENARIOS["equivocating-leader-4"], 10, seed=1)
    assert r["safety_violations"] > 0
    assert r["qc_below_quorum"] > 0  # the oracle counts stake exactly, not via qc.py


def test_prevote_without_lock_is_caught(monkeypatch):
    """Drop rule 5 (prevote only the locked provider unless a later polka justifies
    another): a hidden QC for A and a later Byzantine proposal for B give two QCs."""

    def no_lock(lock, round_, provider, justify_round=None):
        return (
            round_ >= lock.last_round
            and round_ not in lock.prevoted | lock.precommitted
            and not lock.qc_seen
        )

    monkeypatch.setattr(rules, "may_prevote", no_lock)
    r = sim.run_scenario(SCENARIOS["lock-attack-4"], 20, seed=1)
    assert r["conflicting_qcs"] > 0


def test_lock_blocks_the_same_attack():
    r = sim.run_scenario(SCENARIOS["lock-attack-4"], 20, seed=1)
    assert r["safety_violations"] == 0 and r["assigned"] == 20


def test_one_step_protocol_stall_is_gone():
    """The scenario that stalled the one-step protocol (equivocating leader splitting
    honest locks + a withholder) now assigns every job."""
    r = sim.run_scenario(SCENARIOS["mixed-byzantine-7"], 40, seed=2)
    assert r["assigned"] == 40 and r["liveness_failures"] == 0 and r["safety_violations"] == 0


def test_byzantine_stake_above_a_third_is_caught():
    """Outside the fault model (Byzantine stake 5/11) the monitor does see violations."""
    over = sim.Scenario("over-third", 4, byzantine={3: "equivocating-leader"}, stakes=(1, 2, 3, 5))
    assert sim.run_scenario(over, 20, seed=1)["safety_violations"] > 0
