"""The 8×8 handwritten digits (1,797 images, 10 classes) that lesson 06 trains binary networks on.

The array ships with the package (``qcourse/data/digits.npz``, 45 KB; provenance and licence in
``qcourse/data/README.md``): the test set of the UCI "Optical Recognition of Handwritten Digits" data
(E. Alpaydin, C. Kaynak, 1998), the same 1,797 images that scikit-learn's ``load_digits`` returns. Every
pixel counts the ink in a 4×4 block of a 32×32 bitmap, an integer 0–16.

:func:`load` returns a fixed stratified split (seeded), pixels scaled to ``[0, 1]``:

>>> (x_train, y_train), (x_test, y_test) = load()
>>> x_train.shape, x_test.shape, x_train.dtype, y_train.dtype
(torch.Size([1438, 64]), torch.Size([359, 64]), torch.float32, torch.int64)
>>> float(x_train.max()), sorted(set(y_test.tolist())) == list(range(10))
(1.0, True)
"""

from __future__ import annotations

import hashlib
import numbers
from importlib import resources

import numpy as np
import torch

__all__ = ["SHA256", "load", "load_raw"]

#: sha256 of ``images.tobytes() + labels.tobytes()`` (uint8), checked on every load
SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 8, 8] uint8 in 0..16, labels [1797] uint8)``, verified against :data:`SHA256`."""
    with resources.files("qcourse").joinpath("data/digits.npz").open("rb") as f, np.load(f) as d:
        images, labels = d["images"], d["labels"]
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    if digest != SHA256:
        raise ValueError(f"qcourse/data/digits.npz is corrupt: sha256 {digest}, expected {SHA256}")
    return images, labels


def load(test_fraction: float = 0.2, seed: int = 0
         ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((x_train, y_train), (x_test, y_test))``: flattened images ``[N, 64]`` in ``[0, 1]`` (float32)
    and labels (int64), split per class so both parts hold every digit in the same proportion.

    Parameters
    ----------
    test_fraction
        Share of each class held out for testing, strictly between 0 and 1.
    seed
        Seed of the shuffle within each class.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1; got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    images, labels = load_raw()
    rng = np.random.default_rng(int(seed))
    test_idx = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_idx.append(idx[: round(test_fraction * len(idx))])
    test = np.zeros(len(labels), bool)
    test[np.concatenate(test_idx)] = True
    x = torch.from_numpy(images.reshape(len(images), 64).astype(np.float32) / 16.0)
    y = torch.from_numpy(labels.astype(np.int64))
    tr, te = torch.from_numpy(~test), torch.from_numpy(test)
    return (x[tr], y[tr]), (x[te], y[te])
