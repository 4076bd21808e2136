"""Fixtures every suite shares. Keep it small: suite-specific fixtures live with the suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators import Emulators
from emulators.scenario import Scenario

StartEmulators = Callable[..., Emulators]


@pytest.fixture
def start_emulators(tmp_path: Path) -> Iterator[StartEmulators]:
    """`start_emulators(scenario, **Emulators_kwargs)`: started now, stopped after the test."""
    started: list[Emulators] = []

    def start(scenario: Scenario | None = None, **kwargs: Any) -> Emulators:
        kwargs.setdefault("directory", tmp_path)
        emu = Emulators(scenario, **kwargs)
        emu.start()
        started.append(emu)
        return emu

    yield start
    for emu in reversed(started):
        emu.stop()


@pytest.fixture
def emulators(start_emulators: StartEmulators) -> Emulators:
    """The three emulators, empty, on free ports; seed through `emulators.acr.state` etc."""
    return start_emulators()
