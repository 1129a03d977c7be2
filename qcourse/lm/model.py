"""A LLaMA-style decoder-only transformer in plain PyTorch.

The same class holds the embedded Austen model and SmolLM2-135M read from GGUF, so everything a lesson
does to one (``quantize_model``, calibration hooks, outlier statistics) works on the other. Layer names
follow Hugging Face's LLaMA (``layers.0.self_attn.q_proj``, ``layers.0.mlp.down_proj``) so that what
learners see here matches what they will see in real checkpoints.

Rotary embeddings use the "rotate half" layout (pairs ``(i, i + d/2)``), as Hugging Face does; GGUF stores
``q_proj``/``k_proj`` rows permuted for llama.cpp's adjacent-pair layout, and its loader undoes that.

>>> import torch
>>> cfg = LlamaConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16)
>>> model = Llama(cfg)
>>> model(torch.zeros(2, 8, dtype=torch.long)).shape
torch.Size([2, 8, 256])

Decoding one token at a time reuses the keys and values of the earlier positions from a :class:`KVCache`
instead of recomputing them; the logits are those of the full sequence:

>>> tokens = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
>>> cache = KVCache.for_model(model)
>>> steps = [model(tokens[:, :4], cache=cache)[:, -1]] + [model(tokens[:, i:i + 1], cache=cache)[:, -1]
...                                                       for i in (4, 5)]
>>> full = model(tokens)[:, 3:]
>>> torch.allclose(torch.stack(steps, 1), full, atol=1e-5), cache.length
(True, 6)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaConfig:
    """Architecture hyper-parameters (all that is needed to rebuild the module)."""

    vocab_size: int = 256
    d_model: int = 192
    n_layers: int = 3
    n_heads: int = 6
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads
    d_ff: int = 512
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension d_model / n_heads must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32 even under bf16, as LLaMA does, so tiny RMS values do not underflow
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rotary_tables(
    head_dim: int, seq_len: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[seq_len, head_dim]`` for the rotate-half layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """The keys and values every attention layer computed for positions ``0 … length−1`` of a batch.

    Batch-1 decoding spends its time reading weights; without a cache each new token would also rerun the
    whole prefix through every layer. With it, a step feeds only the new tokens: their keys and values
    (after the rotary rotation of their absolute positions) are written at ``length``, and attention reads
    positions ``0 … length + t − 1``. Keys and values are stored per *key/value* head, so a grouped-query
    model (SmolLM2) keeps ``n_kv_heads``, not ``n_heads``, of them.

    Parameters
    ----------
    config : LlamaConfig
        The model's configuration (layers, key/value heads, head size).
    batch : int
        Sequences decoded together.
    max_len : int, optional
        Positions the cache can hold (``config.max_seq_len`` by default, at most that): the memory is
        ``2 · n_layers · batch · n_kv_heads · max_len · head_dim`` floats, allocated once.
    dtype, device
        Of the stored keys and values (the model's activations).

    Examples
    --------
    >>> cfg = LlamaConfig(vocab_size=16, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_seq_len=10)
    >>> c = KVCache(cfg, batch=1, max_len=5)
    >>> c.length, tuple(c.keys.shape)          # layers, batch, kv heads, positions, head dim
    (0, (2, 1, 2, 5, 4))
    """

    def __init__(self, config: LlamaConfig, batch: int = 1, max_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig; got {type(config).__name__}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int; got {batch!r}")
        if max_len is None:
            max_len = config.max_seq_len
        top = config.max_seq_len
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= top:
            raise ValueError(f"max_len must be an int from 1 to max_seq_len={top}; got {max_len!r}")
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.batch, self.max_len, self.length = batch, max_len, 0

    @classmethod
    def for_model(cls, model: Llama, batch: int = 1, max_len: int | None = None) -> KVCache:
        """An empty cache for ``model``, with the dtype and device of its embedding."""
        w = model.embed_tokens.weight
        return cls(model.config, batch, max_len, dtype=w.dtype, device=w.device)

    def reset(self) -> None:
        """Forget every position (the memory is kept for the next sequence)."""
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer ``layer``'s new keys/values ``[batch, kv_heads, t, head_dim]`` at positions
        ``length … length + t − 1`` and return that layer's keys/values for positions ``0 … length + t − 1``.

        :attr:`length` itself advances once all layers have run (``Llama.forward`` does it).
        """
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        """Causal self-attention of ``x [B, T, d]``; with a ``cache``, ``x`` holds the positions after the
        cached ones (``cos``/``sin`` are the tables of those positions) and attends to all earlier ones."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.update(layer, k, v)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:  # one new token sees every cached position: no mask
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            # is_causal aligns the mask top-left; new query i sits at position start + i
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """Decoder-only transformer. ``forward(tokens [B, T]) -> logits [B, T, vocab]``.

    ``forward(tokens, cache=c)`` with a :class:`KVCache` continues the sequences the cache holds: ``tokens``
    are the next ``T`` positions, and the logits are those the full sequence would give them.
    ``tokenizer`` (set by the loaders) encodes and decodes text for this model.
    """

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rotary_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.tokenizer: Any = None
        self.apply(self._init_weights)
        # GPT-2 style: shrink the residual-branch outputs so the stream does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is None:
            hidden, extras = self.block_inputs(tokens)
            for block in self.calibration_blocks():
                hidden = self.run_block(block, hidden, extras)
            return self.calibration_head()(self.head_input(hidden))
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache or None; got {type(cache).__name__}")
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be [batch, seq]; got shape {got}")
        (b, t), start = tokens.shape, cache.length
        if b != cache.batch or cache.keys.shape[0] != len(self.layers):
            raise ValueError(f"the cache holds {cache.keys.shape[0]} layers × batch {cache.batch}; "
                             f"got {len(self.layers)} layers × batch {b} (make it with KVCache.for_model)")
        if start + t > cache.max_len:
            raise ValueError(f"{start} cached + {t} new positions exceed the cache's max_len={cache.max_len}")
        hidden = self.embed_tokens(tokens)
        cos = self.rope_cos[start:start + t].to(hidden.dtype)
        sin = self.rope_sin[start:start + t].to(hidden.dtype)
        for i, block in enumerate(self.calibration_blocks()):
            hidden = block(hidden, cos, sin, cache, i)
        cache.length = start + t
        return self.calibration_head()(self.head_input(hidden))

    # The pieces of ``forward``, in the order it uses them. They are also the interface
    # ``qcourse.nn.BlockwiseModel`` that block-by-block calibration (``quantize_model``) relies on, so the
    # calibration passes run exactly this model's computation, never a copy of it.

    def block_inputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The hidden states entering the first block, and the rotary ``(cos, sin)`` every block needs.

        ``(cos, sin)`` depend only on the sequence length, not on the tokens.

        >>> cfg = LlamaConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=4)
        >>> model = Llama(cfg)
        >>> hidden, (cos, sin) = model.block_inputs(torch.zeros(3, 4, dtype=torch.long))
        >>> tuple(hidden.shape), tuple(cos.shape)
        ((3, 4, 8), (4, 4))
        """
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be [batch, seq]; got shape {got}")
        t = tokens.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len={self.config.max_seq_len}")
        x = self.embed_tokens(tokens)
        return x, (self.rope_cos[:t].to(x.dtype), self.rope_sin[:t].to(x.dtype))

    def calibration_blocks(self) -> nn.ModuleList:
        """The transformer blocks, in the order ``forward`` runs them."""
        return self.layers

    def run_block(
        self, block: nn.Module, hidden: torch.Tensor, extras: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """One block: ``hidden [B, T, d] -> [B, T, d]``, with the rotary tables from :meth:`block_inputs`."""
        cos, sin = extras
        return block(hidden, cos, sin)

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the output head sees: the final RMSNorm of the last block's output."""
        return self.norm(hidden)

    def calibration_head(self) -> nn.Module:
        """The output head, applied to :meth:`head_input` (``lm_head``)."""
        return self.lm_head

    def calibration_stages(self) -> list[list[str]]:
        """A block's linears grouped in the order they compute (names inside a block).

        Layers of one stage see the same input; each stage's inputs depend on the stages before it (GPTQ's
        ``--true-sequential`` quantizes stage by stage).
        """
        return [
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            ["self_attn.o_proj"],
            ["mlp.gate_proj", "mlp.up_proj"],
            ["mlp.down_proj"],
        ]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        seen, n = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embeddings and name.startswith("embed_tokens")):
                continue
            seen.add(id(p))
            n += p.numel()
        return n
