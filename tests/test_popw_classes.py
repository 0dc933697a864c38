"""The GPU class table: loads, validates with clear errors, sizes work and deadlines."""

import pytest

from node.popw.challenge import work_flops
from node.popw.classes import (
    ClassTableError,
    challenge_for,
    deadline_for,
    load_table,
    meets_deadline,
    parse_table,
    qualifying_class,
    rounds_for,
)

GOOD = {
    "popw": {
        "target_seconds": 2.0,
        "min_efficiency": 0.5,
        "network_allowance_seconds": 2.0,
        "openings": 16,
    },
    "classes": {
        "cpu": {"tflops": 0.1, "memory_gb": 4, "n": 2048},
        "big": {"tflops": 100, "memory_gb": 80, "n": 8192, "stride": 4},
    },
}


def test_shipped_table_loads_and_has_cpu():
    table = load_table()
    cpu = table.get("cpu")
    assert cpu.n == 2048 and table.policy.openings == 16
    for cls in table.classes.values():
        ch = challenge_for(cls, table.policy)
        assert ch.rounds % cls.stride == 0 and ch.deadline > table.policy.network_allowance_seconds


def test_rounds_hit_the_target_time_at_rated_speed():
    table = parse_table(GOOD)
    for cls in table.classes.values():
        r = rounds_for(cls, table.policy)
        seconds = work_flops(cls.n, r) / (cls.tflops * 1e12)
        assert 2.0 <= seconds < 2.0 + cls.stride * work_flops(cls.n, 1) / (cls.tflops * 1e12)
        assert deadline_for(cls, table.policy, r) == pytest.approx(seconds / 0.5 + 2.0)


def test_qualifying_class_is_the_fastest_deadline_met():
    table = parse_table(GOOD)
    assert qualifying_class(table, 1e-6) is None
    assert qualifying_class(table, 0.06).name == "cpu"
    assert qualifying_class(table, 60.0).name == "big"
    assert not meets_deadline(table.get("big"), table.policy, 0.1)


def bad(path, value):
    import copy

    data = copy.deepcopy(GOOD)
    *parents, last = path
    node = data
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    "path,value,message",
    [
        (("popw",), None, "missing [popw]"),
        (("popw", "target_seconds"), "2", "expected a number"),
        (("popw", "min_efficiency"), 0.0, "outside"),
        (("popw", "openings"), 1.5, "expected an integer"),
        (("classes", "cpu", "n"), 1000, "power of two"),
        (("classes", "cpu", "tflops"), None, "missing 'tflops'"),
        (("classes", "cpu", "tflops"), True, "expected a number"),
        (("classes", "cpu", "color"), "red", "unknown keys"),
        (("classes", "cpu"), 3, "expected a table"),
        (("extra",), 1, "unknown top-level"),
        (("classes", "cpu", "n"), 16, "too many commits"),
    ],
)
def test_invalid_tables_name_the_field(path, value, message):
    with pytest.raises(ClassTableError, match=message.replace("[", r"\[")):
        parse_table(bad(path, value))


def test_load_errors_are_user_errors(tmp_path):
    from node.errors import UserError

    with pytest.raises(UserError, match="not found"):
        load_table(tmp_path / "missing.toml")
    p = tmp_path / "broken.toml"
    p.write_text("[popw\n")
    with pytest.raises(ClassTableError, match="invalid TOML"):
        load_table(p)
    with pytest.raises(ClassTableError, match="unknown GPU class"):
        parse_table(GOOD).get("tpu")


def test_default_stride_commits_no_more_often_than_min_commit_work():
    from node.popw.challenge import MAX_AUTO_STRIDE, MIN_COMMIT_MACS, commit_stride

    assert [commit_stride(n) for n in (64, 256, 512, 1024, 2048, 8192)] == [16, 16, 2, 1, 1, 1]
    for n in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        s = commit_stride(n)
        assert s == MAX_AUTO_STRIDE or s * n**3 >= MIN_COMMIT_MACS
        assert s == 1 or (s // 2) * n**3 < MIN_COMMIT_MACS  # the smallest such power of two
    # a class without a stride gets its size's; one with a stride keeps it
    small = {**GOOD, "classes": {"small": {"tflops": 0.01, "memory_gb": 4, "n": 256},
                                 "set": {"tflops": 0.01, "memory_gb": 4, "n": 256, "stride": 1}}}  # fmt: skip
    table = parse_table(small)
    assert table.get("small").stride == 16 and table.get("set").stride == 1
    assert parse_table(GOOD).get("cpu").stride == 1
