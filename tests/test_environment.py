"""environment.yml (the conda route) matches pyproject.toml, checked offline.

No conda channel is reachable here, so the file is parsed and its package set compared with pyproject's
runtime dependencies and dev extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# conda-forge name -> PyPI name, where they differ
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(?:;.*)?$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split(requirement: str) -> tuple[str, str]:
    """("name", "specifier") of a pip or conda requirement; conda's single "=" pins read as "=="."""
    m = _REQ.match(requirement)
    assert m, f"cannot parse requirement {requirement!r}"
    spec = m.group(3).replace(" ", "")
    if re.fullmatch(r"=[^=].*", spec):
        spec = "=" + spec
    return _norm(m.group(1)), spec


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _conda_and_pip(env: dict) -> tuple[list[str], list[str]]:
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, "environment.yml needs exactly one pip: section"
    return conda, pips[0]


def test_parses_with_name_and_channels(env):
    assert env["name"] == "qcourse"
    assert env["channels"][0] == "conda-forge"


def test_python_pinned_to_311(env, project):
    conda, _ = _conda_and_pip(env)
    pythons = [_split(d) for d in conda if _split(d)[0] == "python"]
    assert pythons == [("python", "==3.11")], f"python must be pinned to 3.11; got {pythons}"
    assert project["requires-python"] == ">=3.11"


def test_installs_the_package_editable_with_dev_extra(env):
    _, pip = _conda_and_pip(env)
    assert "-e .[dev]" in pip


def test_package_set_matches_pyproject(env, project):
    conda, pip = _conda_and_pip(env)
    got: dict[str, str] = {}
    for req in conda:
        name, spec = _split(req)
        if name in {"python", "pip"}:
            continue
        name = _norm(CONDA_TO_PYPI.get(name, name))
        assert name not in got, f"{name} listed twice"
        got[name] = spec
    for req in pip:
        if req.startswith("-"):
            continue
        name, spec = _split(req)
        assert name not in got, f"{name} listed under both conda and pip"
        got[name] = spec
    want = dict(_split(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]])
    assert set(got) == set(want), (f"missing from environment.yml: {sorted(set(want) - set(got))}; "
                                   f"not in pyproject: {sorted(set(got) - set(want))}")
    differ = {n: (got[n], want[n]) for n in want if got[n] != want[n]}
    assert not differ, f"version constraints differ (environment.yml, pyproject.toml): {differ}"


def test_split_reads_both_syntaxes():
    assert _split("pytorch>=2.4") == ("pytorch", ">=2.4")
    assert _split("python=3.11") == ("python", "==3.11")
    assert _split("triton>=3.0; sys_platform == 'linux'") == ("triton", ">=3.0")
    assert _split("Py_YAML") == ("py-yaml", "")
