"""The compiler cache: keyed by source hash, outside the repo, never stale."""

from node.chain import compile as vc

SRC = """
# pragma version ~=0.4.3
@external
@view
def answer() -> uint256:
    return {n}
"""


def test_cache_hit_and_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("KAISAR_CACHE", str(tmp_path))
    assert vc.cache_dir() == tmp_path
    a = vc.compile_source("T", SRC.format(n=42))
    files = list((tmp_path / "vyper").glob("T-*.json"))
    assert len(files) == 1 and a.bytecode.startswith("0x")
    assert a.source_hash == vc.source_hash(SRC.format(n=42))

    calls = []
    import vyper

    real = vyper.compile_code
    monkeypatch.setattr(vyper, "compile_code", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = vc.compile_source("T", SRC.format(n=42))
    assert again == a and calls == []  # served from the cache
    changed = vc.compile_source("T", SRC.format(n=43))
    assert calls == [1] and changed.bytecode != a.bytecode
    assert len(list((tmp_path / "vyper").glob("T-*.json"))) == 2


def test_corrupt_cache_entry_is_recompiled(tmp_path, monkeypatch):
    monkeypatch.setenv("KAISAR_CACHE", str(tmp_path))
    a = vc.compile_source("T", SRC.format(n=1))
    (entry,) = (tmp_path / "vyper").glob("T-*.json")
    entry.write_text("{truncated")
    assert vc.compile_source("T", SRC.format(n=1)) == a


def test_all_contracts_compile_from_the_package():
    arts = vc.compile_all()
    assert set(arts) == {"License", "Staking", "Escrow", "Rewards"}
    for art in arts.values():
        assert art.abi and len(art.bytecode) > 1000
