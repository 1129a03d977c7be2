"""What machine a measurement was taken on: recorded beside every training run and benchmark figure.

>>> info = machine_info()
>>> {"cpu", "cores", "threads", "torch", "python"} <= set(info)
True
>>> isinstance(cpu_model(), str)
True
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any

import torch

__all__ = ["cpu_model", "machine_info"]


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, torch threads, versions, OpenMP wait policy and the UTC date.

    ``threads`` defaults to ``torch.get_num_threads()``.
    """
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads() if threads is None else threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # libgomp's wait policy changes speed under contention, never the numbers
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
