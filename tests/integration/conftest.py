"""Shared helpers for integration tests: tests that start real services (SLURM, MLflow, ...).

Every test here is marked ``integration`` and ``slow``. A service test may be skipped
only by its explicit opt-out variable (``FUNDUSFM_SKIP_<NAME>=1``, see
:func:`opt_out`); a skip for any other reason turns the session's exit status to 1, and
a service that does not start is an error, so CI never passes with a silently skipped
integration check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_helpers import REPO, opt_out  # noqa: E402,F401  (tests/ holds the shared helpers)

def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


_UNEXPLAINED_SKIPS: list[str] = []


def pytest_runtest_logreport(report):
    """Remember integration tests skipped for any reason but an explicit opt-out."""
    if report.skipped and Path(__file__).parent.name in report.nodeid.split("::")[0].split("/"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "FUNDUSFM_SKIP_" not in reason:
            _UNEXPLAINED_SKIPS.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    # CI must not go green because a service could not start and a test skipped itself.
    if _UNEXPLAINED_SKIPS and exitstatus == 0:
        session.exitstatus = 1
        sys.stderr.write("integration tests skipped without an explicit FUNDUSFM_SKIP_<NAME>=1 opt-out:\n  "
                         + "\n  ".join(_UNEXPLAINED_SKIPS) + "\n")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
