"""Block-by-block calibration, for any model that offers the small :class:`BlockwiseModel` interface.

GPTQ's reference (``llama.py``) calibrates a transformer *sequentially*: the hidden states entering
block ``i`` are cached, ``H = E[x xᵀ]`` of block ``i``'s linears is collected from them, block ``i`` is
quantized, and the cached states are pushed through the *quantized* block to become the inputs of block
``i + 1``. Each block is thus calibrated on what it will really see, and the model is never run end to end
more than once. :func:`calibrate_blockwise` does this for any model that says how to split its forward
pass into blocks (:class:`BlockwiseModel`); ``qcourse.lm``'s ``Llama`` does, and so can any model a
learner writes:

>>> import torch
>>> from torch import nn
>>> class Tower(nn.Module):  # embedding, blocks of two linears, a head
...     def __init__(self):
...         super().__init__()
...         self.embed = nn.Embedding(16, 8)
...         self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
...                                     for _ in range(2))
...         self.head = nn.Linear(8, 16)
...     def block_inputs(self, tokens):
...         return self.embed(tokens), ()
...     def calibration_blocks(self):
...         return self.blocks
...     def run_block(self, block, hidden, extras):
...         return hidden + block(hidden)
...     def head_input(self, hidden):
...         return hidden
...     def calibration_head(self):
...         return self.head
...     def calibration_stages(self):
...         return [["0"], ["2"]]
...     def forward(self, tokens):
...         hidden, extras = self.block_inputs(tokens)
...         for block in self.calibration_blocks():
...             hidden = self.run_block(block, hidden, extras)
...         return self.calibration_head()(self.head_input(hidden))
>>> isinstance(Tower(), BlockwiseModel)
True
>>> model = Tower()
>>> layers = {"blocks.0.0": model.blocks[0][0], "head": model.head}
>>> seen = {}
>>> seconds = calibrate_blockwise(model, layers, torch.randint(0, 16, (4, 5)),
...                               lambda name, H: seen.update({name: tuple(H.shape)}))
>>> seen
{'blocks.0.0': (8, 8), 'head': (8, 8)}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from qcourse.nn.calibration import HessianAccumulator, accumulate_hessians, batches, model_device

__all__ = ["BlockwiseModel", "BlockPlan", "block_plan", "calibrate_blockwise"]


@runtime_checkable
class BlockwiseModel(Protocol):
    """What block-by-block calibration needs from a model: its forward pass, cut at the blocks.

    A model offering these methods should use them in its own ``forward``::

        hidden, extras = model.block_inputs(tokens)
        for block in model.calibration_blocks():
            hidden = model.run_block(block, hidden, extras)
        output = model.calibration_head()(model.head_input(hidden))

    so that calibration runs exactly the model's computation.
    """

    def block_inputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """``(hidden, extras)``: the input of the first block for a batch of model inputs, and what else every
        block needs (rotary tables, masks). ``extras`` may depend on the batch's shape, never on its
        values: calibration computes them once per sequence length and reuses them for every batch."""

    def calibration_blocks(self) -> Sequence[nn.Module]:
        """The blocks, in the order the forward pass runs them; each maps hidden states to hidden states."""

    def run_block(self, block: nn.Module, hidden: torch.Tensor, extras: tuple[Any, ...]) -> torch.Tensor:
        """Run one of :meth:`calibration_blocks` on ``hidden`` (a batch) with ``extras``."""

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """The input of :meth:`calibration_head` given the last block's output (e.g. the final norm)."""

    def calibration_head(self) -> nn.Module:
        """The module after the blocks (the output head); its linears are calibrated on :meth:`head_input`."""

    def calibration_stages(self) -> Sequence[Sequence[str]]:
        """A block's linears (names inside the block) grouped in the order they compute; a stage's inputs
        depend only on earlier stages. Used by ``true_sequential``."""


@dataclass
class BlockPlan:
    """Which selected layers each block holds, in the order they are calibrated and quantized.

    ``stages[i]`` is a list of stages of block ``i`` (each a list of layer names calibrated on the same
    pass); ``head`` the selected layers inside :meth:`BlockwiseModel.calibration_head`.
    """

    stages: list[list[list[str]]]
    head: list[str] = field(default_factory=list)

    @property
    def last_block(self) -> int:
        """Index of the last block with a selected layer (-1 if none)."""
        return max([i for i, s in enumerate(self.stages) if s], default=-1)


def block_plan(model: BlockwiseModel, layers: dict[str, nn.Module], true_sequential: bool) -> BlockPlan:
    """Assign every selected layer to a block (and a stage of it) or to the head; refuse any other layer.

    Layers are matched by identity, so the model's own names do not matter.
    """
    name_of = {id(m): name for name, m in layers.items()}
    stage_names = [list(s) for s in model.calibration_stages()] if true_sequential else []
    placed: set[str] = set()
    stages: list[list[list[str]]] = []
    for i, block in enumerate(model.calibration_blocks()):
        inside = {rel: name_of[id(m)] for rel, m in block.named_modules() if id(m) in name_of}
        placed.update(inside.values())
        if not true_sequential:
            stages.append([list(inside.values())] if inside else [])
            continue
        unknown = [name for rel, name in inside.items() if not any(rel in s for s in stage_names)]
        if unknown:
            raise ValueError(
                f"true_sequential: layer {unknown[0]!r} of block {i} is in none of the model's "
                f"calibration_stages() {stage_names}"
            )
        chosen = [[inside[rel] for rel in s if rel in inside] for s in stage_names]
        stages.append([s for s in chosen if s])
    head_module = model.calibration_head()
    head = [name_of[id(m)] for m in head_module.modules() if id(m) in name_of]
    placed.update(head)
    outside = [name for name in layers if name not in placed]
    if outside:
        raise ValueError(
            f"block-by-block calibration covers the linears inside calibration_blocks() and "
            f"calibration_head(); layer {outside[0]!r} is in neither. Exclude it, or pass sequential=False "
            "for a single calibration pass"
        )
    return BlockPlan(stages, head)


class _Timer:
    """Sums the wall time spent inside ``with timer.timing():`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0


def _first_inputs(model: BlockwiseModel, data: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, tuple]:
    """Hidden states entering the first block for all of ``data`` (computed in batches), and the extras."""
    parts = list(batches(data, batch_size))
    try:
        first = model.block_inputs(parts[0])
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ValueError(
            f"calib of shape {tuple(data.shape)} does not fit the model: {type(model).__name__}.block_inputs "
            f"failed on the first calibration batch with {type(e).__name__}: {e}"
        ) from e
    outs = [first] + [model.block_inputs(b) for b in parts[1:]]
    return torch.cat([h for h, _ in outs]), outs[0][1]


def _block_runner(model: BlockwiseModel, block: nn.Module, extras: tuple) -> Callable[[torch.Tensor], Any]:
    return lambda hidden: model.run_block(block, hidden, extras)


def _head_hessians(
    model: BlockwiseModel,
    layers: dict[str, nn.Module],
    hidden: torch.Tensor,
    batch_size: int,
    gram_dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    head = model.calibration_head()
    if list(layers.values()) == [head] and isinstance(head, nn.Linear):
        # the head is one linear: accumulate its input directly, no [n, t, vocab] logits needed
        acc = HessianAccumulator(head.in_features, hidden.device)
        for b in batches(hidden, batch_size):
            acc.add(model.head_input(b), gram_dtype)
        return {next(iter(layers)): acc.mean()}
    return accumulate_hessians(layers, lambda b: head(model.head_input(b)), hidden, batch_size, gram_dtype)


def calibrate_blockwise(
    model: BlockwiseModel,
    layers: dict[str, nn.Module],
    calib: torch.Tensor,
    quantize: Callable[[str, torch.Tensor], None],
    batch_size: int = 8,
    true_sequential: bool = False,
    gram_dtype: torch.dtype = torch.float64,
    on_block: Callable[[int], None] | None = None,
) -> float:
    """Calibrate and quantize ``layers`` block by block; return the seconds spent running the model.

    ``quantize(name, H)`` is called for every layer, in model order, as soon as its ``H`` is known; it is
    expected to replace the layer in ``model`` by its quantized version, so that later blocks are
    calibrated on the outputs of quantized ones.

    Cost: one embedding pass, then per block one pass to collect ``H`` and one to push the cached states
    through the quantized block (the GPTQ reference does the same two passes per block); ``true_sequential``
    splits the first pass into one pass per stage of :meth:`BlockwiseModel.calibration_stages`, each stage
    calibrated on the outputs of the already quantized stages before it.
    """
    plan = block_plan(model, layers, true_sequential)
    timer = _Timer()
    blocks = list(model.calibration_blocks())
    with torch.no_grad():
        with timer.timing():
            hidden, extras = _first_inputs(model, calib.to(model_device(model)), batch_size)
        for i, block in enumerate(blocks):
            if i > plan.last_block and not plan.head:
                break  # nothing after this block needs calibration inputs
            if on_block is not None:
                on_block(i)
            for stage in plan.stages[i]:
                with timer.timing():
                    hessians = accumulate_hessians(
                        {nm: layers[nm] for nm in stage}, _block_runner(model, block, extras), hidden,
                        batch_size, gram_dtype,
                    )
                for nm in stage:
                    quantize(nm, hessians.pop(nm))
            with timer.timing():
                # the next block sees the outputs of this block as quantized
                hidden = torch.cat([model.run_block(block, b, extras) for b in batches(hidden, batch_size)])
        if plan.head:
            with timer.timing():
                hessians = _head_hessians(model, {nm: layers[nm] for nm in plan.head}, hidden, batch_size,
                                          gram_dtype)
            for nm in plan.head:
                quantize(nm, hessians.pop(nm))
    return timer.seconds
