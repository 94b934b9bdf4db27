"""The real-cluster tier: one real Kubernetes per test session, down again at the end.

Marker ``real``: ``make test-real`` runs only these; ``make test`` (as root) runs them too.
On a laptop without root or ``../shared/realk8s`` they skip with the reason; under CI=true
that is a failure. After every test, no capture agent that the test's plugin runs added may
still be running (and, on a cluster this session brought up, none at all).
"""

from __future__ import annotations

import pytest

from tests.conftest import IN_CI
from tests.real.cluster import RealCluster, missing
from tests.real.images import prepare_images


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/real/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory):
    why = missing()
    if why:
        if IN_CI:
            pytest.fail(f"CI=true but the real cluster cannot run: {why}")
        pytest.skip(why)
    home = tmp_path_factory.mktemp("real-home")
    cluster = RealCluster.start(home)
    try:
        cluster.project_image = prepare_images(cluster, tmp_path_factory.mktemp("images"))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _no_agent_left_running(request: pytest.FixtureRequest):
    """Whatever a test did, the capture agents its traces added must be gone soon after."""
    if "real" not in request.fixturenames:
        yield
        return
    cluster: RealCluster = request.getfixturevalue("real")
    first = len(cluster.added)
    yield
    ours = cluster.added[first:]
    left = cluster.wait_no_agents(ours) if ours else []
    if not cluster.reused:
        left += [a for a in cluster.wait_no_agents(None, timeout=5) if a not in left]
    assert not left, f"capture agents still running after the test: {left}"
