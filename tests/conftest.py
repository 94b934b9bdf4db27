"""Shared fixtures. Lab tests skip on a laptop, and fail instead of skipping under CI=true."""

from __future__ import annotations

import contextlib
import glob
import os

import pytest

from tests.lab.netns import Lab, lab_missing

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_lab() -> None:
    """Skip (or, under CI=true, fail) a test that needs root, namespaces and Debian tools."""
    why = lab_missing()
    if why:
        if IN_CI:
            pytest.fail(f"CI=true but the lab cannot run: {why}")
        pytest.skip(why)


@pytest.fixture
def lab():
    """A fresh Lab whose namespaces and processes are removed even if the test fails."""
    require_lab()
    with Lab() as lab:
        yield lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real-cluster tier runs last: its cluster stays up from its first test to the end
    of the session, and the other tiers should not share the machine with it."""
    items.sort(key=lambda item: "/tests/real/" in str(item.path))


STOP_FILES = "/tmp/dnstrace-*.stop"


@pytest.fixture(autouse=True, scope="session")
def _stop_files_removed():
    """The simulated kubelet runs capture containers on this machine's filesystem, so the
    stop files the plugin creates through exec land in the real /tmp. Whatever test or
    scenario made them, the session removes the ones it created (one place for all)."""
    before = set(glob.glob(STOP_FILES))
    yield
    for path in set(glob.glob(STOP_FILES)) - before:
        with contextlib.suppress(OSError):
            os.unlink(path)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    """Tables fit the terminal (COLUMNS, else 120 off a tty) by shortening texts in the
    middle. Tests that read names out of tables see them whole at 250 columns; the tests of
    the layout itself set their own COLUMNS (or pass a width)."""
    monkeypatch.setenv("COLUMNS", "250")
