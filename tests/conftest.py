"""Shared test setup: deterministic, deadline-free hypothesis runs and seeded RNGs for every test.

The machine that runs CI has 2 cores shared with other jobs, so hypothesis deadlines would fail on timing
noise rather than on bugs; and every RNG is seeded so a failure reproduces. ``HYPOTHESIS_PROFILE=dev``
explores new random examples instead of the fixed derandomized ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Seed Python, NumPy and torch before every test, so no test depends on the order tests run in."""
    from qcourse.notebook import seed_everything

    seed_everything(0)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (holds notebooks/, solutions/, exercises/, qcourse/)."""
    return REPO_ROOT


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: many small ops stall in a 2-thread pool on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
