"""Fixtures for the stand-in tests: one stand-in (with --sts) per session."""

from __future__ import annotations

import pytest

from standin_helpers import Decisions, RunningStandin


@pytest.fixture(scope="session")
def running_standin():
    """A stand-in with moto STS, torn down by closing its stdin."""
    standin = RunningStandin("--sts")
    yield standin
    assert standin.close_stdin_and_wait() == 0


@pytest.fixture(scope="session")
def info(running_standin) -> dict:
    """The stand-in's JSON line."""
    return running_standin.info


@pytest.fixture
def decisions(info) -> Decisions:
    return Decisions(info["decisions_log"])
