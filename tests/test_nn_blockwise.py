"""qcourse.nn without qcourse.lm: the BlockwiseModel interface on a model of the test's own, per-layer bit
plans, and the calibration errors of issue 9 (wrong input shape, all-zero data)."""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcourse.nn
from qcourse.nn import BlockwiseModel, QuantLinear, collect_hessians, quantize_model
from qcourse.nn.blockwise import block_plan

NN_DIR = Path(qcourse.nn.__file__).parent


def test_importing_nn_loads_no_lm_module():
    code = "import sys, qcourse.nn; print(sorted(m for m in sys.modules if m.startswith('qcourse.lm')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_nn_never_imports_lm_not_even_in_doctests():
    for path in sorted(NN_DIR.glob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("qcourse.lm"), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("qcourse.lm") for a in node.names), path.name
        # docstring examples are code too (prose may mention qcourse.lm; examples may not use it)
        examples = [ln for ln in text.splitlines() if re.match(r"\s*(>>>|\.\.\.) ", ln)]
        bad = [ln for ln in examples if re.search(r"qcourse\.lm|from qcourse import .*\blm\b", ln)]
        assert not bad, f"{path.name}: {bad}"


# --------------------------------------------------------------------------------------------------------
# a block-wise model that is not a Llama


class Tower(nn.Module):
    """Embedding → residual blocks (linear, tanh, linear) → scaled head input → head of two linears."""

    def __init__(self, n_blocks: int = 3, d: int = 16, vocab: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"up": nn.Linear(d, 2 * d), "down": nn.Linear(2 * d, d)}) for _ in range(n_blocks)
        )
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, vocab))

    def block_inputs(self, tokens):
        hidden = self.embed(tokens)
        return hidden, (torch.linspace(0.5, 1.5, tokens.shape[1])[:, None],)

    def calibration_blocks(self):
        return self.blocks

    def run_block(self, block, hidden, extras):
        (position_gain,) = extras
        return hidden + block["down"](torch.tanh(block["up"](hidden * position_gain)))

    def head_input(self, hidden):
        return 2 * hidden

    def calibration_head(self):
        return self.head

    def calibration_stages(self):
        return [["up"], ["down"]]

    def forward(self, tokens):
        hidden, extras = self.block_inputs(tokens)
        for block in self.calibration_blocks():
            hidden = self.run_block(block, hidden, extras)
        return self.calibration_head()(self.head_input(hidden))


def tower(seed: int = 0) -> Tower:
    torch.manual_seed(seed)
    return Tower()


def toks(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 32, (6, 10), generator=torch.Generator().manual_seed(seed))


class Recorder:
    """A ``quantize(name, H)`` callback that records H and quantizes the layer with the package's RTN."""

    def __init__(self, model: nn.Module, bits: int = 2) -> None:
        self.model, self.bits, self.seen = model, bits, {}

    def __call__(self, name: str, H: torch.Tensor) -> None:
        self.seen[name] = H
        parent, _, child = name.rpartition(".")
        q = QuantLinear.from_linear(self.model.get_submodule(name), "rtn", bits=self.bits, group_size=None)
        setattr(self.model.get_submodule(parent), child, q)  # also right inside ModuleDict / Sequential


def test_tower_offers_the_interface_and_a_plain_mlp_does_not():
    assert isinstance(tower(), BlockwiseModel)
    assert not isinstance(nn.Sequential(nn.Linear(2, 2)), BlockwiseModel)


def test_blockwise_on_a_non_llama_model_calibrates_each_block_on_quantized_predecessors():
    model, data = tower(), toks()
    qmodel, report = quantize_model(model, "rtn", bits=2, group_size=None, calib=data, exclude=None,
                                    progress=False)
    assert report.sequential
    blocks = [f"blocks.{i}.{p}" for i in range(3) for p in ("up", "down")]
    assert [r.name for r in report.layers] == blocks + ["head.0", "head.2"]
    # the H the report's proxy used for block 2 is that of a model whose blocks 0 and 1 are quantized
    partial, _ = quantize_model(model, "rtn", bits=2, group_size=None, include=("blocks.0", "blocks.1"),
                                progress=False)
    H = collect_hessians(partial, data, include="blocks.2")
    for name in ("blocks.2.up", "blocks.2.down"):
        lin = model.get_submodule(name)
        w_hat = qmodel.get_submodule(name).weight
        d, w = (lin.weight.detach() - w_hat).double(), lin.weight.detach().double()
        h = H[name]
        expected = float(((d @ h) * d).sum() / ((w @ h) * w).sum())
        assert report[name].proxy_loss == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(qmodel(data)).all()


def test_head_hessians_come_from_head_input_of_quantized_blocks():
    model, data = tower(), toks()
    layers = {n: model.get_submodule(n) for n in ("blocks.1.up", "head.0", "head.2")}
    rec = Recorder(model)
    float_head0 = copy.deepcopy(model.head[0])
    qcourse.nn.calibrate_blockwise(model, layers, data, rec, batch_size=4)
    with torch.no_grad():
        hidden, extras = model.block_inputs(data)
        for block in model.blocks:  # block 1's "up" is now quantized in model: this is what the head saw
            hidden = model.run_block(block, hidden, extras)
        x0 = model.head_input(hidden).reshape(-1, 16).double()
        # both head layers are calibrated in one pass, as the layers of one block are: head.2 on float head.0
        x2 = F.relu(float_head0(model.head_input(hidden))).reshape(-1, 16).double()
    torch.testing.assert_close(rec.seen["head.0"], x0.T @ x0 / 60, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(rec.seen["head.2"], x2.T @ x2 / 60, rtol=1e-6, atol=1e-9)


def test_true_sequential_stages_come_from_the_model():
    model, data = tower(), toks()
    layers = {n: model.get_submodule(n) for n in ("blocks.0.up", "blocks.0.down")}
    plan = block_plan(model, layers, true_sequential=True)
    assert plan.stages[0] == [["blocks.0.up"], ["blocks.0.down"]] and plan.stages[1] == [] and plan.head == []
    rec = Recorder(model)
    qcourse.nn.calibrate_blockwise(model, layers, data, rec, true_sequential=True)
    # down's H was measured with "up" already quantized
    with torch.no_grad():
        hidden, (gain,) = model.block_inputs(data)
        x = torch.tanh(model.blocks[0]["up"](hidden * gain)).reshape(-1, 32).double()
    assert isinstance(model.blocks[0]["up"], QuantLinear)
    torch.testing.assert_close(rec.seen["blocks.0.down"], x.T @ x / 60, rtol=1e-6, atol=1e-9)

    class Unstaged(Tower):
        def calibration_stages(self):
            return [["up"]]

    with pytest.raises(ValueError, match=r"layer 'blocks.0.down' of block 0 is in none of the model's"):
        quantize_model(Unstaged(), "rtn", bits=2, group_size=None, calib=data, true_sequential=True,
                       progress=False)


def test_a_layer_outside_blocks_and_head_is_refused_in_blockwise_mode():
    class WithStem(Tower):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(16, 16)

        def block_inputs(self, tokens):
            hidden, extras = super().block_inputs(tokens)
            return self.stem(hidden), extras

    model, data = WithStem(), toks()
    with pytest.raises(ValueError, match=r"layer 'stem' is in neither"):
        quantize_model(model, "rtn", bits=2, group_size=None, calib=data, progress=False)
    _, report = quantize_model(model, "rtn", bits=2, group_size=None, calib=data, sequential=False,
                               progress=False)
    assert not report.sequential and "stem" in [r.name for r in report.layers]


# --------------------------------------------------------------------------------------------------------
# per-layer bits


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))


def test_per_layer_bits_plan_is_followed_and_reported():
    plan = {"0": 2, "2": 4.0, "4": 8}
    qmodel, report = quantize_model(mlp(), "rtn", bits=plan, group_size=32, exclude=None, progress=False)
    assert [r.bits for r in report.layers] == [2, 4, 8]
    assert isinstance(report.layers[1].bits, int)  # 4.0 normalised by the method's check
    for name, b in plan.items():
        alone, _ = quantize_model(mlp(), "rtn", bits=int(b), group_size=32, include=name, progress=False)
        torch.testing.assert_close(qmodel.get_submodule(name).weight, alone.get_submodule(name).weight,
                                   rtol=0, atol=0)
    assert report.bits == {"0": 2, "2": 4, "4": 8}
    text = str(report)
    assert "mixed bits (2, 4, 8)" in text and text.splitlines()[1].split()[:3] == ["layer", "shape", "bits"]
    # per-channel storage: bits + 16-bit scale + bits-wide zero per row of 32 or 64 inputs
    assert report["0"].bits_per_weight < report["2"].bits_per_weight < report["4"].bits_per_weight


def test_per_layer_bits_plan_must_cover_exactly_the_selected_layers():
    with pytest.raises(ValueError, match=r"must name every selected layer and no other: missing \['4'\]"):
        quantize_model(mlp(), "rtn", bits={"0": 2, "2": 4}, group_size=32, progress=False)
    with pytest.raises(ValueError, match=r"not selected \['9'\]"):
        quantize_model(mlp(), "rtn", bits={"0": 2, "2": 4, "4": 4, "9": 2}, group_size=32, progress=False)
    with pytest.raises(ValueError, match=r"bits\['2'\]: bits must be one of"):
        quantize_model(mlp(), "rtn", bits={"0": 2, "2": 9, "4": 4}, group_size=32, progress=False)
    with pytest.raises(TypeError, match=r"bits\['0'\]"):
        quantize_model(mlp(), "rtn", bits={"0": True, "2": 4, "4": 4}, group_size=32, progress=False)


# --------------------------------------------------------------------------------------------------------
# issue 9: calibration data that cannot be right


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((6, 5, 8, 8), r"calib of shape \(6, 5, 8, 8\) does not fit the model: layer 'features.0' \(Conv2d\) "
                       r"got an input of shape \(6, 5, 8, 8\) but expects \[n, 3, H, W\]"),
        ((6, 3, 9, 9), r"calib of shape \(6, 3, 9, 9\) does not fit the model: layer 'fc' \(Linear\) "
                       r"got an input of shape \(6, 324\) but expects \[\.\.\., 256\]"),
    ],
)
def test_calib_of_the_wrong_shape_names_calib_and_the_expected_input(shape, match):
    torch.manual_seed(0)
    images = torch.randn(*shape)
    with pytest.raises(ValueError, match=match):
        quantize_model(ConvNet(), "gptq", bits=4, group_size=64, calib=images, progress=False)
    with pytest.raises(ValueError, match=match):
        collect_hessians(ConvNet(), images)


def test_calib_that_block_inputs_refuses_names_calib():
    class Images(Tower):  # a block-wise model of float inputs [n, t, 16] (no vocabulary)
        def __init__(self):
            super().__init__()
            del self.embed

        def block_inputs(self, x):
            return x.view(x.shape[0], x.shape[1], 16), (torch.ones(x.shape[1], 1),)

    fits = r"calib of shape \(4, 10, 12\) does not fit the model: Images\.block_inputs failed .* RuntimeError"
    with pytest.raises(ValueError, match=fits):
        quantize_model(Images(), "gptq", bits=4, group_size=None, calib=torch.randn(4, 10, 12),
                       progress=False)


def test_all_zero_calibration_data_is_refused_naming_the_layer():
    zeros = torch.zeros(8, 32)
    for method in ("gptq", "rtn"):
        with pytest.raises(ValueError, match=r"layer '0' \(64×32\): its calibration inputs are all zero"):
            quantize_model(mlp(), method, bits=4, group_size=32, calib=zeros, progress=False)
