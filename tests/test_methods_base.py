"""The method contract: shared validation in Method.quantize, the one resolver, the saved-state protocol."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from qcourse import methods
from qcourse.methods.base import (
    Method,
    QuantizedWeight,
    check_bits,
    parse_options,
    state_tensor,
    weight_from_state,
)
from qcourse.methods.gptq import gptq_quantize

pytestmark = pytest.mark.usefixtures("one_thread")

OURS = ("rtn", "hqq", "hqq-lsq", "gptq")


def _weight(shape: tuple[int, int] = (16, 64), seed: int = 0, scale: float = 0.02) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def _hessian(n: int, seed: int = 1) -> torch.Tensor:
    x = torch.randn(4 * n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.T @ x / x.shape[0]


def _quantize(name: str, w: torch.Tensor, bits: float, group_size: int | None = 32, **options):
    return methods.get(name).quantize(w, bits, group_size, hessian=_hessian(w.shape[1]), **options)


# --- the resolver -----------------------------------------------------------------------------------------

def test_get_accepts_names_and_methods_only() -> None:
    rtn = methods.get("rtn")
    assert methods.get(rtn) is rtn
    assert set(OURS) <= set(methods.available())
    with pytest.raises(TypeError, match="method must be a method name .* got list"):
        methods.get(["rtn"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"method must be one of \[.*'rtn'.*\]; got 'rnt'"):
        methods.get("rnt")


# --- options, bits, seed ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OURS)
def test_unknown_option_names_the_method_and_the_allowed_ones(name: str) -> None:
    allowed = ", ".join(sorted(methods.get(name).defaults))
    message = rf"unknown option\(s\) \['colour'\] for {name}; allowed: {allowed}$"
    with pytest.raises(ValueError, match=message):
        _quantize(name, _weight(), 4, colour="red")


@pytest.mark.parametrize(("name", "options", "error", "message"), [
    ("gptq", {"act_order": "no"}, TypeError, "act_order must be True or False for gptq; got 'no'"),
    ("rtn", {"symmetric": 1}, TypeError, "symmetric must be True or False for rtn"),
    ("hqq", {"iters": 2.5}, TypeError, "iters must be an int for hqq"),
    ("hqq", {"beta": "10"}, TypeError, "beta must be a number for hqq"),
    ("hqq", {"axis": 2}, ValueError, "axis must be 0 or 1"),
    ("gptq", {"blocksize": 0}, ValueError, "blocksize must be a positive int"),
])
def test_option_types_and_values_are_checked(name: str, options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _quantize(name, _weight(), 4, **options)


def test_a_float_option_takes_an_int() -> None:
    w = _weight()
    # a float option takes an int, and the result is the same
    a, b = _quantize("hqq", w, 3, beta=10), _quantize("hqq", w, 3, beta=10.0)
    assert torch.equal(a.dequantize(), b.dequantize())
    assert parse_options({}, {"x": 1}, "m") == {"x": 1}


@pytest.mark.parametrize("name", OURS)
def test_bool_bits_are_refused_and_integral_floats_are_ints(name: str) -> None:
    w = _weight()
    with pytest.raises(TypeError, match=f"bits must be a number .* for {name}; got bool True"):
        _quantize(name, w, True)
    with pytest.raises(TypeError, match="bits must be a number"):
        _quantize(name, w, "4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"bits must be one of .* for {name}; got 4.5"):
        _quantize(name, w, 4.5)
    assert torch.equal(_quantize(name, w, 4.0).dequantize(), _quantize(name, w, 4).dequantize())


def test_158_stays_ternary_where_supported() -> None:
    w = _weight()
    qw = _quantize("hqq", w, 1.58)
    assert set(qw.codes().unique().tolist()) <= {0, 1, 2} and qw.bits == 1.58
    with pytest.raises(ValueError, match="bits must be one of"):
        _quantize("rtn", w, 1.58)
    assert check_bits(2.0, (1.58, 2), "hqq") == 2 and isinstance(check_bits(2.0, (2,), "x"), int)


def test_seed_must_be_a_non_negative_int() -> None:
    for seed in (-1, True, 1.5):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            _quantize("rtn", _weight(), 4, seed=seed)


@pytest.mark.parametrize("name", OURS)
def test_every_method_accepts_a_layers_parameter_as_is(name: str) -> None:
    layer = nn.Linear(64, 16)
    assert layer.weight.requires_grad
    got = _quantize(name, layer.weight, 3).dequantize()
    want = _quantize(name, layer.weight.detach().clone(), 3).dequantize()
    assert torch.equal(got, want) and not got.requires_grad


def test_subclass_hooks_and_missing_implementation() -> None:
    class Bare(Method):
        pass

    with pytest.raises(NotImplementedError, match="Bare must implement _quantize"):
        Bare(name="bare", supported_bits=(4,)).quantize(_weight(), 4)
    with pytest.raises(ValueError, match="group_size=5 does not divide in_features=64"):
        Bare(name="bare", supported_bits=(4,)).quantize(_weight(), 4, 5)


# --- issue 9: silently wrong inputs ------------------------------------------------------------------------

def test_gptq_refuses_a_non_symmetric_or_all_zero_hessian() -> None:
    w = _weight((4, 16))
    H = _hessian(16)
    bad = H.clone()
    bad[0, 1] += 1.0
    with pytest.raises(ValueError, match="hessian must be symmetric"):
        methods.get("gptq").quantize(w, 4, 8, hessian=bad)
    with pytest.raises(ValueError, match="hessian is all zero"):
        methods.get("gptq").quantize(w, 4, 8, hessian=torch.zeros(16, 16, dtype=torch.float64))
    # a Hessian summed in float32 is symmetric only up to rounding: accepted
    H32 = (H.float() + 1e-9 * torch.randn(16, 16)).double()
    methods.get("gptq").quantize(w, 4, 8, hessian=H32)


@pytest.mark.parametrize("name", ["hqq", "hqq-lsq", "gptq"])
def test_weights_too_small_for_the_stored_grid_are_refused_not_zeroed(name: str) -> None:
    w = _weight(scale=1e-8)
    with pytest.raises(ValueError, match="largest \\|value\\|.*power of two"):
        _quantize(name, w, 4)
    # an all-zero weight is not "too small": it is stored exactly
    assert torch.equal(_quantize(name, torch.zeros(4, 64), 4).dequantize(), torch.zeros(4, 64))
    # RTN stores its (rounded-up) fp16 scale and keeps what it can
    assert _quantize("rtn", w, 4).dequantize().abs().sum() > 0


def test_gptq_on_fp16_weights_near_the_fp16_limit_never_returns_inf() -> None:
    w = ((torch.rand(8, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 6e4).half()
    H = _hessian(64)
    res = gptq_quantize(w, H, 2, group_size=32)
    assert res.w_q.dtype == torch.float32 and torch.isfinite(res.w_q).all()
    qw = methods.get("gptq").quantize(w, 2, 32, hessian=H)
    assert torch.isfinite(qw.dequantize()).all()
    assert (qw.dequantize() - w.float()).abs().max() > 65504 - float(w.float().abs().max())  # levels pass 6e4
    with pytest.raises(ValueError, match="beyond torch.float16's range"):
        qw.dequantize(torch.float16)


# --- the state protocol -------------------------------------------------------------------------------------

def _state_cases() -> list[tuple[str, float, int | None, dict]]:
    return [
        ("rtn", 4, 32, {}), ("rtn", 3, None, {}), ("rtn", 2, None, {"granularity": "tensor"}),
        ("rtn", 5, 16, {"symmetric": True}), ("rtn", 3, 8, {}),
        ("hqq", 2, 32, {}), ("hqq", 1.58, 16, {}), ("hqq", 3, 8, {"axis": 0}), ("hqq-lsq", 3, 32, {}),
        ("gptq", 4, 32, {}), ("gptq", 3, None, {}), ("gptq", 3, 16, {"act_order": True}),
        ("gptq", 2, 16, {"act_order": True, "static_groups": True}), ("gptq", 3, 32, {"symmetric": True}),
        ("gptq", 7, 8, {}),
    ]


@pytest.mark.parametrize("case", _state_cases(), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_state_round_trip_is_bit_exact_and_sized_by_storage_bits(case: tuple) -> None:
    name, bits, group_size, options = case
    qw = _quantize(name, _weight((24, 64), seed=5), bits, group_size, **options)
    tensors, meta = qw.to_state()
    meta = json.loads(json.dumps(meta))          # JSON-serialisable, and survives the trip
    assert meta["class"] == type(qw).state_class() and meta["shape"] == [24, 64]
    stored_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert stored_bytes == math.ceil(qw.storage_bits / 8) or (
        0 <= 8 * stored_bytes - qw.storage_bits < 8 * len(tensors))
    back = weight_from_state({k: v.clone() for k, v in tensors.items()}, meta)
    assert type(back) is type(qw) and back.shape == qw.shape
    assert torch.equal(back.dequantize(), qw.dequantize())
    assert back.storage_bits == qw.storage_bits


def test_integer_zeros_are_bit_packed_in_the_state() -> None:
    qw = _quantize("rtn", _weight(), 3, 8)                  # 16·8 zeros of 3 bits = 48 bytes, not 128
    assert qw.to_state()[0]["zero"].numel() == 48
    ao = _quantize("gptq", _weight(), 3, 16, act_order=True)
    assert ao.to_state()[0]["g_idx"].dtype == torch.int32


def test_corrupted_or_unknown_states_are_refused() -> None:
    qw = _quantize("gptq", _weight(), 4, 32)
    tensors, meta = qw.to_state()
    with pytest.raises(ValueError, match="state tensor 'scale' must be torch.float16"):
        weight_from_state({**tensors, "scale": tensors["scale"].float()}, meta)
    with pytest.raises(ValueError, match="state tensor 'packed' must be torch.uint8 of shape"):
        weight_from_state({**tensors, "packed": tensors["packed"][:-1]}, meta)
    with pytest.raises(ValueError, match="state tensor 'zero' is missing"):
        weight_from_state({k: v for k, v in tensors.items() if k != "zero"}, meta)
    with pytest.raises(ValueError, match="is not a known QuantizedWeight class"):
        weight_from_state(tensors, {**meta, "class": "os:system"})
    with pytest.raises(ValueError, match="cannot import 'qcourse.no_such_module'"):
        weight_from_state(tensors, {**meta, "class": "qcourse.no_such_module:W"})
    with pytest.raises(ValueError, match=r"meta\['shape'\] must be"):
        weight_from_state(tensors, {**meta, "shape": [16]})
    with pytest.raises(ValueError, match="must be a dict with a 'class' entry"):
        weight_from_state(tensors, {"shape": [16, 64]})
    with pytest.raises(TypeError, match="tensors must be a dict"):
        weight_from_state({"packed": [1, 2]}, meta)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="lacks the entry 'n_groups'"):
        weight_from_state(tensors, {k: v for k, v in meta.items() if k != "n_groups"})
    with pytest.raises(ValueError, match=r"meta\['symmetric'\] must be true or false"):
        weight_from_state(tensors, {**meta, "symmetric": "no"})
    with pytest.raises(ValueError, match="must be 'none', 'int' or 'float'"):
        t, m = _quantize("rtn", _weight(), 4, 32).to_state()
        weight_from_state(t, {**m, "zero": "maybe"})


def test_a_weight_without_the_protocol_says_so() -> None:
    class Plain(QuantizedWeight):
        shape = (1, 1)

        def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(1, 1, dtype=dtype)

        @property
        def storage_bits(self) -> int:
            return 1

    with pytest.raises(NotImplementedError, match="Plain does not implement to_state"):
        Plain().to_state()
    assert state_tensor({"a": torch.zeros(2)}, "a", torch.float32, (2,)).shape == (2,)


def test_methods_import_building_blocks_and_base_never_each_other(repo_root) -> None:
    import ast

    folder = repo_root / "qcourse" / "methods"
    siblings = {p.stem for p in folder.glob("*.py")} - {"__init__", "base"}
    for path in folder.glob("*.py"):
        if path.stem == "__init__":
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                if node.module == "qcourse.methods":
                    imported |= {f"qcourse.methods.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        wrong = sorted(m for m in imported if m.removeprefix("qcourse.methods.") in siblings
                       and m.startswith("qcourse.methods."))
        assert not wrong, f"{path.name} imports another method: {wrong}"


def test_a_fresh_process_loads_a_saved_weight_without_importing_the_method(tmp_path) -> None:
    import subprocess
    import sys

    from safetensors.torch import save_file

    qw = _quantize("gptq", _weight(), 3, 16, act_order=True)
    tensors, meta = qw.to_state()
    save_file(tensors, str(tmp_path / "w.safetensors"))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    save_file({"want": qw.dequantize()}, str(tmp_path / "want.safetensors"))
    code = (
        "import json, sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from qcourse.methods.base import weight_from_state\n"
        "assert 'qcourse.methods.gptq' not in sys.modules\n"
        f"d = {str(tmp_path)!r}\n"
        "qw = weight_from_state(load_file(d + '/w.safetensors'), json.load(open(d + '/meta.json')))\n"
        "assert torch.equal(qw.dequantize(), load_file(d + '/want.safetensors')['want']), 'differs'\n"
        "print(type(qw).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "GPTQWeight"
