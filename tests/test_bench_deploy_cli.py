"""`kaisar bench deploy` arguments: bad values end as one clear line with exit code 2,
before any devnet or container starts (the bench itself is run as `kaisar bench deploy`,
docs/BENCHMARKS.md: it takes ~16 s, and its figures are no unit test's business)."""

import pytest

from cli import main


def exit_code(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # argparse's errors exit from inside main
        return int(exc.code or 0)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--jobs", "x"], "invalid int value"),
        (["--chain", "ganache"], "invalid choice: 'ganache'"),
        (["--net", "cluster"], "invalid choice: 'cluster'"),
        (["--net", "procs", "--chain", "embedded"], "--net procs runs its own anvil chain"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, needle, capsys):
    assert exit_code(["bench", "deploy", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
