"""Quantize a model per (method, bits, group size) and score it — cached, for tables and widgets.

A :class:`Sweep` holds one model, one evaluation token budget and (optionally) calibration tokens. Asking
it for a setting quantizes every block linear of a copy of the model with :func:`qcourse.nn.quantize_model`
(``lm_head`` stays in float, as in the course's tables), measures the copy's perplexity on the first
``tokens`` predictions of a corpus split, and keeps the result: the second request for the same setting
costs nothing, which is what makes a slider respond at once after its first visit. The original model
is never modified.

Every result is a plain dict: ``method, bits, group_size, bits_per_weight, ppl, ppl_ratio, rel_error,
quantize_seconds`` and ``errors``, a seeded sample of the normalized weight errors ``(W − Ŵ)/rms(W)``
(per layer RMS) for the error histogram.

>>> from qcourse import lm
>>> sw = Sweep(lm.load(), tokens=256)                     # the embedded model, 256 validation bytes
>>> r4 = sw.run("rtn", 4, 32)
>>> r4["bits_per_weight"], r4 is sw.run("rtn", 4, 32)      # 4 + 16/32 + 4/32; the second call is cached
(4.625, True)
>>> r2 = sw.run("rtn", 2, 32)
>>> r4["ppl_ratio"] < 1.05 and r4["ppl_ratio"] < r2["ppl_ratio"]   # 4 bits barely hurt; 2 bits hurt more
True
>>> sw.run("gptq", 3, 32)
Traceback (most recent call last):
...
ValueError: method 'gptq' needs calibration data: pass calib= to Sweep ...
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from qcourse.tables import format_table

__all__ = ["Sweep", "weight_errors", "format_rows", "SETTING_KEYS"]

#: keys of one result row that describe the setting (the rest are measurements)
SETTING_KEYS = ("method", "bits", "group_size")


def weight_errors(model: nn.Module, qmodel: nn.Module, names: Sequence[str], sample: int = 65536,
                  seed: int = 0) -> torch.Tensor:
    """A seeded sample of ``(W − Ŵ)/rms(W)`` over the layers ``names`` (each layer scaled by its own RMS).

    ``sample`` values are drawn without replacement from all errors together (all of them when there are
    fewer), so the histogram of a large model costs the same as that of a small one.

    >>> lin = nn.Linear(8, 4, bias=False)
    >>> q = nn.Linear(8, 4, bias=False)
    >>> with torch.no_grad():
    ...     _ = lin.weight.fill_(2.0); _ = q.weight.fill_(1.0)
    >>> weight_errors(nn.Sequential(lin), nn.Sequential(q), ["0"]).unique().tolist()   # (2 − 1)/2
    [0.5]
    """
    if isinstance(sample, bool) or not isinstance(sample, int) or sample <= 0:
        raise ValueError(f"sample must be a positive int; got {sample!r}")
    mods, qmods = dict(model.named_modules()), dict(qmodel.named_modules())
    parts = []
    for name in names:
        if name not in mods or name not in qmods:
            raise ValueError(f"no layer named {name!r} in both models")
        w = mods[name].weight.detach().float()
        w_hat = qmods[name].weight.detach().float()
        rms = float(w.pow(2).mean().sqrt()) or 1.0
        parts.append(((w - w_hat) / rms).flatten())
    errs = torch.cat(parts)
    if errs.numel() <= sample:
        return errs
    idx = torch.randperm(errs.numel(), generator=torch.Generator().manual_seed(seed))[:sample]
    return errs[idx]


class Sweep:
    """Cached quantize-and-score of one model over (method, bits, group size).

    Parameters
    ----------
    model
        A :class:`~qcourse.lm.model.Llama` with a ``tokenizer`` (the embedded model or SmolLM2).
    tokens
        Predictions scored per perplexity (small: a widget should answer in a second or two).
    calib
        Calibration token ids ``[n, seq_len]`` (train split), needed by calibration-aware methods (GPTQ).
    split
        Corpus split scored (never the one ``calib`` comes from).
    seed
        Passed to the methods and used for the error sample.
    sample
        Errors kept per setting for the histogram.

    """

    def __init__(self, model: nn.Module, tokens: int = 2048, calib: torch.Tensor | None = None,
                 split: str = "validation", seed: int = 0, sample: int = 65536) -> None:
        if not isinstance(model, nn.Module) or not hasattr(model, "tokenizer"):
            raise TypeError("model must be a qcourse Llama (an nn.Module with a .tokenizer)")
        for argname, value in (("tokens", tokens), ("sample", sample)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{argname} must be a positive int; got {value!r}")
        if split not in ("train", "validation", "test"):
            raise ValueError(f"split must be 'train', 'validation' or 'test'; got {split!r}")
        if calib is not None and split == "train":
            raise ValueError("split='train' would score the text calibration reads; use validation or test")
        self.model = model.eval()
        self.tokens = tokens
        self.calib = calib
        self.split = split
        self.seed = seed
        self.sample = sample
        self._cache: dict[tuple[str, float, int | None], dict[str, Any]] = {}
        self._fp_ppl: float | None = None

    @property
    def fp_ppl(self) -> float:
        """Perplexity of the unquantized model on the same tokens (computed once)."""
        if self._fp_ppl is None:
            self._fp_ppl = self._score(self.model)
        return self._fp_ppl

    def _score(self, model: nn.Module) -> float:
        from qcourse.lm.evaluate import perplexity

        with torch.no_grad():
            return float(perplexity(model, split=self.split, tokens=self.tokens))

    def cached(self) -> list[dict[str, Any]]:
        """Every result computed so far, in the order they were computed."""
        return list(self._cache.values())

    def run(self, method: str, bits: float, group_size: int | None = 64, **options: Any) -> dict[str, Any]:
        """Quantize with ``method`` at ``bits`` and ``group_size``, score, cache, and return the result row.

        Extra ``options`` go to the method (they are part of the cache key).
        """
        from qcourse import methods
        from qcourse.nn import quantize_model

        m = methods.get(method)
        if m.needs_hessian and self.calib is None:
            raise ValueError(f"method {method!r} needs calibration data: pass calib= to Sweep "
                             "(e.g. qcourse.lm.corpus.calibration_tokens(...))")
        key = (method, bits, group_size, tuple(sorted(options.items())))
        if key in self._cache:
            return self._cache[key]
        fp = self.fp_ppl
        t0 = time.perf_counter()
        qmodel, report = quantize_model(self.model, m, bits=bits, group_size=group_size,
                                        calib=self.calib if m.needs_hessian else None, seed=self.seed,
                                        progress=False, **options)
        seconds = time.perf_counter() - t0
        ppl = self._score(qmodel)
        names = [r.name for r in report.layers]
        row = {
            "method": method, "bits": bits, "group_size": group_size,
            "bits_per_weight": report.bits_per_weight, "ppl": ppl, "ppl_ratio": ppl / fp,
            "rel_error": report.rel_error, "quantize_seconds": seconds,
            "errors": weight_errors(self.model, qmodel, names, self.sample, self.seed),
        }
        self._cache[key] = row
        return row

    def table(self, methods: Sequence[str], bits: Sequence[float], group_size: int | None = 64,
              progress: bool = True) -> list[dict[str, Any]]:
        """:meth:`run` for every method × bits, as rows (``errors`` left out), with a progress bar."""
        settings = [(m, b) for m in methods for b in bits]
        it: Any = settings
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(settings, desc="quantize + score", unit="setting")
        rows = []
        for m, b in it:
            row = self.run(m, b, group_size)
            rows.append({k: v for k, v in row.items() if k != "errors"})
        return rows


#: columns of :func:`format_rows`, with their headers and number formats
_ROW_HEADERS = {"method": "method", "bits": "bits", "group_size": "group", "bits_per_weight": "bits/weight",
                "ppl": "ppl", "ppl_ratio": "× fp", "quantize_seconds": "seconds"}
_ROW_FORMATS = {"bits": "g", "bits_per_weight": ".5g", "ppl": ".4g", "ppl_ratio": ".4g",
                "quantize_seconds": ".1f"}


def format_rows(rows: Sequence[dict[str, Any]], fp_ppl: float | None = None) -> str:
    """:meth:`Sweep.table` rows as text (bits/weight, perplexity, its ratio to fp, seconds), with a float row
    first when ``fp_ppl`` is given; printed by :func:`qcourse.tables.format_table`.

    >>> print(format_rows([{"method": "rtn", "bits": 4, "group_size": 64, "bits_per_weight": 4.3125,
    ...                     "ppl": 5.5, "ppl_ratio": 1.1, "quantize_seconds": 0.5}], fp_ppl=5.0))
    method  bits  group  bits/weight  ppl  × fp  seconds
    float     32      -           32    5     1        -
    rtn        4     64       4.3125  5.5   1.1      0.5
    """
    head = [] if fp_ppl is None else [{"method": "float", "bits": 32, "bits_per_weight": 32.0, "ppl": fp_ppl,
                                       "ppl_ratio": 1.0}]
    return format_table([*head, *rows], list(_ROW_HEADERS), headers=_ROW_HEADERS, formats=_ROW_FORMATS)
