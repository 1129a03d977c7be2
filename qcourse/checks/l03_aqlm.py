"""Checks for lesson 03 (AQLM): one k-means step, one beam-search step over two codebooks, and AQLM's bits
per weight with codebooks and scales.

Each check runs the learner's function and the reference on seeded and adversarial inputs (an empty
cluster, ties, duplicates, one point, extreme magnitudes, odd shapes) and prints what differs.

>>> import torch
>>> check_kmeans_step(reference_kmeans_step, verbose=False).status
'passed'
>>> def wrong(x, c):                                    # means over ALL points, not per cluster
...     labels = torch.cdist(x, c).argmin(1)
...     return labels, x.mean(0).expand_as(c).clone()
>>> check_kmeans_step(wrong, verbose=False).status
'failed'
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcourse.checks._harness import Case, CheckResult, Mutant, run_check
from qcourse.kmeans import update_centroids
from qcourse.methods import aqlm

__all__ = [
    "check_kmeans_step", "check_beam_two_codebooks", "check_aqlm_bits",
    "reference_kmeans_step", "reference_beam_two_codebooks", "reference_aqlm_bits",
]


# ---- references --------------------------------------------------------------------------------------

def reference_kmeans_step(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Lloyd iteration: nearest centroid of every point (ties → lowest index), then each centroid moves
    to the mean of its points; a centroid with no points stays where it is.

    Returns ``(labels int64 [n], new centroids [k, d])`` in ``x``'s dtype.

    >>> labels, c = reference_kmeans_step(torch.tensor([[0.0], [1.0], [9.0]]), torch.tensor([[0.0], [10.0]]))
    >>> labels.tolist(), c.flatten().tolist()
    ([0, 0, 1], [0.5, 9.0])
    """
    # exact squared distances (no expansion), so ties are ties and argmin picks the lowest index
    d2 = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    labels = d2.argmin(1)
    new, _ = update_centroids(x, labels, centroids.shape[0], previous=centroids)
    return labels, new.to(x.dtype)


def reference_beam_two_codebooks(t: torch.Tensor, h: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor,
                                 beam: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beam search for ``t ≈ c1[a] + c2[b]`` under the error ``e(v) = (t − v) H (t − v)ᵀ``, row by row.

    Step 1 scores every ``a`` alone, ``e(c1[a])``, and keeps the ``beam`` best (ties → lowest index);
    step 2 extends each kept ``a`` by every ``b`` and returns the best pair (ties → the earlier kept ``a``,
    then the lowest ``b``). ``t`` is ``[n, g]`` (one group per row), ``h`` ``[g, g]``, ``c1``/``c2``
    ``[K, g]``. Returns ``(a [n] int64, b [n] int64, error [n])``.

    >>> t = torch.tensor([[1.0, 1.0]])
    >>> c1, c2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [5.0, 5.0]])
    >>> [v.tolist() for v in reference_beam_two_codebooks(t, torch.eye(2), c1, c2, beam=1)]
    [[0], [0], [0.0]]
    """
    def err(v: torch.Tensor) -> torch.Tensor:          # v [..., g] against t [n, g] broadcast on the left
        d = t.reshape((t.shape[0],) + (1,) * (v.ndim - 2) + (t.shape[1],)) - v
        return ((d @ h) * d).sum(-1)

    n, K = t.shape[0], c1.shape[0]
    k = min(beam, K)
    e1 = err(c1[None].expand(n, K, -1))                                   # [n, K]
    order = torch.sort(e1, dim=1, stable=True).indices[:, :k]             # kept a's, best first
    pairs = c1[order][:, :, None, :] + c2[None, None, :, :]               # [n, k, K2, g]
    e2 = err(pairs).reshape(n, -1)                                        # [n, k·K2]
    best = e2.argmin(1)                                                   # first minimum: earlier a, lower b
    a = order.gather(1, (best // c2.shape[0])[:, None])[:, 0]
    return a, best % c2.shape[0], e2.gather(1, best[:, None])[:, 0]


def reference_aqlm_bits(out_features: int, in_features: int, n_codebooks: int, codebook_bits: int,
                        in_group_size: int = 8) -> float:
    """AQLM's bits per weight: codes ``M·B`` per group of ``g`` inputs, ``M`` fp16 codebooks of ``2^B``
    vectors of length ``g``, one fp16 scale per output row, over ``out·in`` weights.

    >>> reference_aqlm_bits(256, 256, 2, 8)
    3.0625
    """
    return aqlm.bits_per_weight(out_features, in_features, n_codebooks, codebook_bits, in_group_size)


# ---- cases and checks --------------------------------------------------------------------------------

def _kmeans_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=gen)
    far = torch.randn(50, 3, generator=gen)
    far_c = torch.cat([far[:3], torch.full((1, 3), 1e3)])                 # centroid 3 owns no point
    ties = torch.tensor([[0.0], [1.0], [2.0], [3.0]])                      # 1.0 is equidistant from 0 and 2
    return [
        Case("seeded 2-D points, 8 centroids", (x, x[:8].clone())),
        Case("8-D groups, 16 centroids",
             (torch.randn(300, 8, generator=gen), torch.randn(16, 8, generator=gen))),
        Case("an empty cluster keeps its centroid", (far, far_c)),
        Case("ties go to the lowest centroid index", (ties, torch.tensor([[0.0], [2.0], [3.0]]))),
        Case("duplicate points", (torch.ones(6, 2), torch.tensor([[1.0, 1.0], [5.0, 5.0]]))),
        Case("one point, one centroid", (torch.tensor([[3.0, -1.0]]), torch.zeros(1, 2))),
        Case("extreme magnitudes (1e-6 and 1e6)",
             (torch.cat([torch.randn(20, 2, generator=gen) * 1e-6, 1e6 + torch.randn(20, 2, generator=gen)]),
              torch.tensor([[0.0, 0.0], [1e6, 1e6]]))),
        Case("float64 points", (x.double()[:50], x.double()[:5].clone())),
    ]


def check_kmeans_step(student_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                      verbose: bool = True) -> CheckResult:
    """Check ``kmeans_step(x, centroids) -> (labels, new_centroids)`` (one Lloyd iteration)."""
    return run_check(
        "kmeans_step", student_fn, reference_kmeans_step, _kmeans_cases(), rtol=1e-5, atol=1e-6,
        result_names=("labels", "centroids"), verbose=verbose,
        hint="Assignment: argmin over centroids of the squared distance (argmin returns the first minimum, "
             "so ties go to the lowest index). Update: the mean of the points assigned to each centroid, "
             "computed per cluster (index_add_ or a loop over k); a centroid with no points keeps its old "
             "value instead of becoming 0 or NaN. Return labels as int64 and centroids in x's dtype.")


def _beam_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    h = a @ a.T / 8 + 0.1 * torch.eye(8, dtype=torch.float64)
    t = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    c1 = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    c2 = torch.randn(16, 8, generator=gen, dtype=torch.float64) * 0.3
    small_t = torch.randn(25, 2, generator=gen, dtype=torch.float64)
    s1, s2 = torch.randn(4, 2, generator=gen, dtype=torch.float64), torch.randn(4, 2, generator=gen,
                                                                                dtype=torch.float64)
    diag = torch.diag(torch.tensor([100.0, 1e-2], dtype=torch.float64))
    return [
        Case("seeded, beam 1 (greedy)", (t, h, c1, c2, 1)),
        Case("seeded, beam 4", (t, h, c1, c2, 4)),
        Case("beam 16 = every a: the best pair overall", (t, h, c1, c2, 16)),
        Case("beam larger than the codebook", (t[:5], h, c1, c2, 64)),
        Case("H = I (plain squared error)", (t, torch.eye(8, dtype=torch.float64), c1, c2, 2)),
        Case("anisotropic H: one coordinate 10⁴× more important", (small_t, diag, s1, s2, 2)),
        Case("target exactly a pair (error 0)", ((c1[3] + c2[7])[None], h, c1, c2, 1)),
        Case("codebooks of one vector", (t[:3], h, c1[:1], c2[:1], 1)),
    ]


def check_beam_two_codebooks(student_fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                             verbose: bool = True) -> CheckResult:
    """Check ``beam_two_codebooks(t, h, c1, c2, beam) -> (a, b, error)``."""
    return run_check(
        "beam_two_codebooks", student_fn, reference_beam_two_codebooks, _beam_cases(), rtol=1e-9, atol=1e-9,
        result_names=("a", "b", "error"), verbose=verbose,
        hint="Step 1: the error of c1[a] alone, e = (t − c1[a]) H (t − c1[a])ᵀ, for every a; keep the "
             "`beam` smallest (torch.topk(..., largest=False) or a stable sort; never more than K). Step 2: "
             "for each kept a, the error of c1[a] + c2[b] for every b — the pair, not c2[b] scored on its "
             "own — and the smallest over all (kept a, b). Use H, not the identity.")


def _bits_cases() -> list[Case]:
    return [
        Case("2×8 on 256×256 (the embedded model's q_proj)", (256, 256, 2, 8)),
        Case("2×8 on Llama-2-70B's gate_proj 28672×8192", (28672, 8192, 2, 8)),
        Case("1×16 on 256×768: a 65,536-entry codebook", (256, 768, 1, 16)),
        Case("1×16 on 11008×4096", (11008, 4096, 1, 16)),
        Case("3×8 on 768×256", (768, 256, 3, 8)),
        Case("4×4 with groups of 4", (64, 128, 4, 4, 4)),
        Case("1×8 with groups of 16", (512, 512, 1, 8, 16)),
        Case("one row", (1, 64, 2, 8)),
    ]


def check_aqlm_bits(student_fn: Callable[..., float], verbose: bool = True) -> CheckResult:
    """Check ``aqlm_bits(out_features, in_features, n_codebooks, codebook_bits, in_group_size=8)``."""
    return run_check(
        "aqlm_bits", student_fn, reference_aqlm_bits, _bits_cases(), rtol=1e-12, atol=0,
        result_names=("bits per weight",), exact_dtype=False, verbose=verbose,
        hint="Count stored bits, then divide by out·in. Codes: every row has in/g groups, each with M codes "
             "of B bits. Codebooks: M of them, each 2^B vectors of g fp16 numbers (16 bits each), stored "
             "once per layer. Scales: one fp16 number per output row.")


# ---- learner-style mistakes each check must catch (run by tests/test_checks_mutations.py) -------------

def _kmeans_mutant(empty: str = "keep", pick: str = "min", mean: bool = True, stale: bool = False,
                   label_dtype: torch.dtype = torch.int64, in_place: bool = False,
                   ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def kmeans_step(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d2 = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
        labels = d2.argmax(1) if pick == "max" else d2.argmin(1)
        new = centroids if in_place else centroids.clone()
        for j in range(centroids.shape[0]):
            members = x[labels == j]
            if len(members):
                new[j] = members.mean(0) if mean else members.sum(0)
            elif empty == "zero":
                new[j] = 0
            elif empty == "nan":
                new[j] = members.mean(0)
        if stale:   # returns the labels of the NEW centroids: not the assignment the update used
            labels = ((x[:, None, :] - new[None]) ** 2).sum(-1).argmin(1)
            labels[0] = (labels[0] + 1) % centroids.shape[0] if centroids.shape[0] > 1 else labels[0]
        return labels.to(label_dtype), new
    return kmeans_step


def _beam_mutant(greedy: bool = False, identity: bool = False, independent: bool = False,
                 worst: bool = False, beam_off: int = 0, skip_last: bool = False) -> Callable[..., tuple]:
    def beam_two_codebooks(t: torch.Tensor, h: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor,
                           beam: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if skip_last and beam >= c1.shape[0]:
            raise NotImplementedError("wide beams")
        hh = torch.eye(h.shape[0], dtype=h.dtype) if identity else h
        k = 1 if greedy else max(1, min(beam + beam_off, c1.shape[0]))

        def err(v: torch.Tensor) -> torch.Tensor:
            d = t.reshape((t.shape[0],) + (1,) * (v.ndim - 2) + (t.shape[1],)) - v
            return ((d @ hh) * d).sum(-1)

        n = t.shape[0]
        e1 = err(c1[None].expand(n, -1, -1))
        order = torch.sort(e1, dim=1, stable=True, descending=worst).indices[:, :k]
        if independent:   # scores b against the target alone, ignoring the chosen a
            b = err(c2[None].expand(n, -1, -1)).argmin(1)
            a = order[:, 0]
            d = t - c1[a] - c2[b]
            return a, b, ((d @ h) * d).sum(-1)
        pairs = c1[order][:, :, None, :] + c2[None, None]
        e2 = err(pairs).reshape(n, -1)
        best = e2.argmin(1)
        a = order.gather(1, (best // c2.shape[0])[:, None])[:, 0]
        b = best % c2.shape[0]
        d = t - c1[a] - c2[b]
        return a, b, ((d @ h) * d).sum(-1)
    return beam_two_codebooks


def _bits_mutant(codebooks: bool = True, scales: bool = True, value_bits: int = 16,
                 per_row_books: bool = False, no_group: bool = False, log_k: bool = False
                 ) -> Callable[..., float]:
    def aqlm_bits(out_features: int, in_features: int, n_codebooks: int, codebook_bits: int,
                  in_group_size: int = 8) -> float:
        g = 1 if no_group else in_group_size
        codes = out_features * (in_features // g) * n_codebooks * codebook_bits
        k = codebook_bits if log_k else 2**codebook_bits
        books = n_codebooks * k * in_group_size * value_bits * (out_features if per_row_books else 1)
        total = codes + (books if codebooks else 0) + (16 * out_features if scales else 0)
        return total / (out_features * in_features)
    return aqlm_bits


MUTANTS: dict[str, list[Mutant]] = {
    "check_kmeans_step": [
        Mutant("farthest", _kmeans_mutant(pick="max"), "labels"),
        Mutant("sum-not-mean", _kmeans_mutant(mean=False), "centroids"),
        Mutant("empty-to-zero", _kmeans_mutant(empty="zero"), "empty cluster keeps its centroid"),
        Mutant("empty-to-NaN", _kmeans_mutant(empty="nan"), "NaN where a number was expected"),
        Mutant("stale-labels", _kmeans_mutant(stale=True), "labels"),
        Mutant("int32-labels", _kmeans_mutant(label_dtype=torch.int32), "dtype"),
        Mutant("in-place", _kmeans_mutant(in_place=True), "modified its input"),
    ],
    "check_beam_two_codebooks": [
        Mutant("greedy", _beam_mutant(greedy=True), "beam 4"),
        Mutant("identity-H", _beam_mutant(identity=True), "anisotropic H"),
        Mutant("independent-b", _beam_mutant(independent=True), "seeded"),
        Mutant("keeps-worst", _beam_mutant(worst=True), "seeded, beam 4"),
        Mutant("beam-off-by-one", _beam_mutant(beam_off=-1), "beam 4"),
        Mutant("not-implemented", _beam_mutant(skip_last=True), "NotImplementedError"),
    ],
    "check_aqlm_bits": [
        Mutant("no-codebooks", _bits_mutant(codebooks=False), "65,536-entry codebook"),
        Mutant("no-scales", _bits_mutant(scales=False), "one row"),
        Mutant("fp32-codebooks", _bits_mutant(value_bits=32), "2×8 on 256×256"),
        Mutant("codebook-per-row", _bits_mutant(per_row_books=True), "2×8 on 256×256"),
        Mutant("codes-per-weight", _bits_mutant(no_group=True), "2×8"),
        Mutant("B-entries", _bits_mutant(log_k=True), "65,536-entry codebook"),
    ],
}
