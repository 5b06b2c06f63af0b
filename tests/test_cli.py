"""The command line itself: a wrong flag or a missing argument is one line, help is help."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run"], "bench run: Missing argument 'recipe'"),
        (["data", "synth", "--out", "x", "--cars", "0"], "Invalid value for '--cars'"),
        (["show", "recipes/alexander.toml", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(bench, args, needle):
    result = bench(*args)
    assert result.code == 2 and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bench") and needle in lines[0], result.err


@pytest.mark.parametrize("args", [[], ["data"], ["--help"], ["run", "--help"]])
def test_help_is_printed_once_with_its_brackets(bench, args):
    result = bench(*args)
    assert result.code == 0 and result.err == ""
    assert result.out.count("Usage: bench") == 1
    if args == ["run", "--help"]:
        assert "[profiles.NAME]" in result.out
