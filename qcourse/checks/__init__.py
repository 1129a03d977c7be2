"""Exercise checks: ``qcourse.checks.<name>(student_fn)`` compares a learner's function with the reference.

One module per lesson (``l01_formats``, ``l02_rtn_hqq``, ...) defines the checks; they are re-exported here.
See :mod:`qcourse.checks._harness` for what a check prints.
"""

from __future__ import annotations

import importlib

from qcourse.checks._harness import STRICT_ENV, Case, CheckResult, run_check

__all__ = ["STRICT_ENV", "Case", "CheckResult", "run_check"]

# lesson modules whose public functions are checks; each lists them in its own __all__
_LESSON_MODULES = (
    "l01_formats",
    "l02_rtn_hqq",
    "l03_aqlm",
    "l04_quip",
    "l05_bitnet",
    "l06_binary",
    "l07_rate_distortion",
    "l08_kernels",
    "l09_capstone",
)

for _mod_name in _LESSON_MODULES:
    try:
        _mod = importlib.import_module(f"qcourse.checks.{_mod_name}")
    except ModuleNotFoundError as _exc:  # a lesson module not written yet
        if _exc.name != f"qcourse.checks.{_mod_name}":
            raise
        continue
    for _name in _mod.__all__:
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
