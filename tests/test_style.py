"""The repository is ruff clean (pyproject's [tool.ruff] settings): package, tests and notebooks alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing_in_the_repository():
    pytest.importorskip("ruff", reason="ruff is in the dev extra")
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"ruff check . found problems:\n{done.stdout}{done.stderr}"
