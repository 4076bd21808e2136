"""The command line's own behaviour, with the engine injected."""

from __future__ import annotations

import pytest

from cleanup.__main__ import EXIT_CRASHED, main
from tests.builders import environment


@pytest.fixture
def settings_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in environment().items():
        monkeypatch.setenv(name, value)


async def broken_engine(settings, **_: object):
    raise KeyError("unexpected answer")


def test_a_crash_exits_4_with_one_line_and_no_traceback(settings_environment, capsys):
    """An unexpected failure is exit 4, said in one line on stderr, nothing on stdout."""
    assert main([], engine=broken_engine) == EXIT_CRASHED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ended unexpectedly (KeyError)" in captured.err
    assert "Traceback" not in captured.err
