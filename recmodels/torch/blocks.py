"""GenRec in PyTorch, the layers: attention mask, attention, FFN and the blocks.

Mirrors recmodels/jax/blocks.py name for name and in the same order; parameter names are the
state_dict keys on both sides, so one safetensors file loads into either framework. The
oneDNN section (`linear` and its helpers) is torch's only: it picks the kernel of a product
XLA chooses for itself, and computes the same layers.

Shapes: B batch, T sequence length, d model width, h heads, C catalog size, R negatives.
Input sequences are left-padded with item 0, so the most recent item is always at T-1.

Every block takes (x, mask, rel, norm, ctx) and returns (y, (k, v)): rel [B|1, 1, T, L+T] is
the relative position of each key to each query (HSTU's bias), norm HSTU's divisor, ctx the
keys and values [B, h, L, d/h] of earlier positions (a KV cache; None: the keys are x's own)
and (k, v) those of x's own positions, for the cache.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from recmodels.config import GenRecConfig
from recmodels.envvars import switch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INIT_STD = 0.02  # GPT-2's initialiser for every matrix and embedding

# SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators";
# the constants of java.util.SplittableRandom), written as signed int64: tensor products wrap.
_GAMMA = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1, _MIX2 = -4658895280553007687, -7723592293110705685  # 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _shr(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: the sign bit is masked off)."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def keep_mask(shape: torch.Size, p: float, seed: torch.Tensor) -> torch.Tensor:
    """A counter-based dropout mask: element i is kept when the top 24 bits of SplitMix64's
    output for the state (seed + i) * gamma are >= p * 2^24 (P(keep) = 1 - p to 6e-8).

    The mask is a pure function of (seed, i), so torch.compile fuses it into the op that uses
    it: one pass over the data, no random-number state to step per element (inductor's own
    CPU dropout draws each element from a Philox call and costs ~20x more here).
    """
    n = 1
    for s in shape:
        n *= s
    # (i + seed) * gamma: SplitMix64's i-th state from the initial state seed * gamma (the
    # seed is added first so that inductor keeps the product out of its index arithmetic)
    z = (torch.arange(n, dtype=torch.int64, device=seed.device).view(shape) + seed) * _GAMMA
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    z = z ^ _shr(z, 31)
    return _shr(z, 40) >= round(p * (1 << 24))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: each element kept with probability 1 - p and scaled by 1 / (1 - p),
    as F.dropout. Eager: kept where a torch.rand draw is >= p (on CPU ~3x faster than
    F.dropout's bernoulli_). Under torch.compile: the counter-based mask of keep_mask, seeded
    by one draw from torch's generator per call. The same distribution either way, other
    random numbers (so eager and compiled agree exactly only with dropout off)."""
    if not training or p == 0.0:
        return x
    if torch.compiler.is_compiling():
        seed = torch.randint(-(2**62), 2**62, (), device=x.device)
        keep = keep_mask(x.shape, p, seed)
    else:
        keep = torch.rand(x.shape, device=x.device) >= p
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


# --- fp32 matmuls on CPU through oneDNN ----------------------------------------------------
#
# torch's CPU fp32 matmul is MKL's sgemm. On CPUs MKL does not tune for (e.g. AMD EPYC), it
# runs its AVX2 kernels: 94-110 GFLOP/s a core on this project's 2-core EPYC, where oneDNN's
# matmul (bundled with torch, the path of its bf16 CPU matmuls) reaches 235 and XLA's 178-218.
# The projections and the FFN are ~80% of a small train step there, so the CPU fp32 Linear
# layers (forward and both backward products) go through oneDNN's fp32 matmul: the same
# products in fp32, another summation order (the parity tolerances hold; tested).
# RECBENCH_ONEDNN_LINEAR=0 (or false, off, no: recmodels.envvars.switch) turns it off (torch's
# own F.linear).
ONEDNN_ENV = "RECBENCH_ONEDNN_LINEAR"
ONEDNN_MIN_ROWS = 64  # fewer rows (one decode step of a few requests) stay with F.linear
# Smaller weights (tiny's d = 50) stay with F.linear too: there the call's fixed costs (the
# autograd Function, padding rows, kernel look-up) outweigh the faster product; measured with
# benchmarks/train_step.py, tiny-games ran 0.86x (1 thread) and 0.92x (2) through oneDNN.
ONEDNN_MIN_WEIGHT = 128 * 128


def _mm_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a [M, K] @ b[N, K]^T (+ bias [N]) -> [M, N] by oneDNN's fp32 matmul. b is read in
    place whatever its strides; a is made contiguous first (a transposed a costs a copy)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's linear op and it computes x @ w^T + b (checked once on
    a small product), and RECBENCH_ONEDNN_LINEAR is not off (recmodels.envvars.switch: an
    InputError for a value it does not take)."""
    if not switch(ONEDNN_ENV) or not torch.backends.mkldnn.is_available():
        return False
    try:
        a, b, c, d = torch.randn(5, 3), torch.randn(4, 3), torch.randn(4), torch.randn(5, 4)
        return bool(torch.allclose(_mm_t(a, b, c), a @ b.T + c, rtol=1e-5, atol=1e-5)
                    and torch.allclose(_mm_t(d.T, a.T), d.T @ a, rtol=1e-5, atol=1e-5))
    except (RuntimeError, AttributeError):  # a build without the op, or it refuses the call
        return False


def bucket_rows(m: int) -> int:
    """The row count a oneDNN product of m rows runs at: m rounded up to a multiple of 64, or
    of 1/32 of the power of two at or below m when that is larger (at most ~3% padding, <= 32
    sizes an octave). oneDNN builds a kernel per shape (~0.5 ms for d=50, ~2 ms for 256x768
    here, more than the product itself), and packed batches have a new token count at almost
    every step; full windows (B x T, a multiple of 64 for T = 50, 200) run as they are."""
    step = max(64, (1 << (max(m, 1).bit_length() - 1)) // 32)
    return -(-m // step) * step


def _pad_rows(a: torch.Tensor, m: int) -> torch.Tensor:
    """[M, F] -> [m, F] with zero rows after a's (a itself when M == m)."""
    if a.shape[0] == m:
        return a
    return torch.cat([a, a.new_zeros(m - a.shape[0], a.shape[1])])


class _OneDNNLinear(torch.autograd.Function):
    """y = x w^T + b on [M, K] x [N, K] fp32 CPU tensors, each product by oneDNN at
    bucket_rows(M) rows (zero rows added, their outputs dropped; zero rows of dy add nothing
    to dw): dx = dy w, dw = dy^T x, db = sum_rows dy."""

    @staticmethod
    def forward(x, w, b):
        return _mm_t(_pad_rows(x, bucket_rows(x.shape[0])), w, b)[: x.shape[0]]

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        m = x.shape[0]
        rows = bucket_rows(m)
        dyp = _pad_rows(dy, rows)
        dx = _mm_t(dyp, w.T)[:m] if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            # dw = dy^T x contracts the rows; _mm_t copies its first operand's transpose, so
            # the narrower of dy [M, N] and x [M, K] goes first (qkv, fc1: x; fc2: dy): the
            # copy of fc1's [M, 1024] dy cost as much as a third of its product
            xp = _pad_rows(x, rows)
            dw = (_mm_t(dyp.T, xp.T) if dy.shape[1] <= x.shape[1]
                  else _mm_t(xp.T, dyp.T).T.contiguous())  # dw^T = x^T dy, [N, K] again
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for a Linear layer, [..., K] -> [..., N]. An fp32 nn.Linear on CPU in eager
    mode (no autocast, no dispatch mode, no hooks on the layer), with at least ONEDNN_MIN_ROWS
    rows and ONEDNN_MIN_WEIGHT weights, computes through oneDNN (see above). Anything else (a
    quantised layer, torch.compile, CUDA, bf16, a few rows, a small layer) is the layer's own
    forward."""
    w = getattr(layer, "weight", None)
    if (type(layer) is not nn.Linear or x.device.type != "cpu" or x.dtype != torch.float32
            or type(w) is not nn.Parameter or w.dtype != torch.float32
            or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu")
            or is_in_torch_dispatch_mode()  # e.g. FlopCounterMode: it counts aten's ops
            or layer._forward_hooks or layer._forward_pre_hooks
            or x.numel() < ONEDNN_MIN_ROWS * x.shape[-1] or w.numel() < ONEDNN_MIN_WEIGHT
            or not onednn_linear_available()):
        return layer(x)
    y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), w, layer.bias)
    return y.view(*x.shape[:-1], y.shape[-1])


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (no parameters: state_dicts are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention_mask(seq: torch.Tensor) -> torch.Tensor:
    """[B, T] ids -> [B, 1, T, T] bool, True where query t may attend to key s.

    Causal, and padded keys are hidden. Every position also sees itself, so the rows of
    padded queries are never empty (their outputs are ignored by the loss).
    """
    t = seq.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seq.device).tril()
    eye = torch.eye(t, dtype=torch.bool, device=seq.device)
    return (causal & (seq != 0)[:, None, None, :]) | eye


def with_context(k: torch.Tensor, v: torch.Tensor,
                 ctx: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
    """Keys and values [B, h, T, d/h] of x's own positions after those of the cache, if any."""
    if ctx is None:
        return k, v
    return torch.cat([ctx[0], k], dim=2), torch.cat([ctx[1], v], dim=2)


class Packing(NamedTuple):
    """Where a packed batch's tokens sit in its padded [B, T] layout (HSTU's jagged tensors).

    Training on left-padded histories spends most of its work on padding (synthetic-games:
    ~88% of positions). Packed, the position-wise layers (LN, the projections, the FFN,
    dropout, the loss) run on the N real tokens [N, d]; only attention, which mixes
    positions, moves them into [B, T, .] and back. Padded rows there are zero: their keys
    are masked and their query rows discarded, so the tokens' values are those of the padded
    computation.
    """

    tok: torch.Tensor  # [N] int64: flat indices b * T + t of the tokens, ascending
    b: int
    t: int

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[N, f] -> [B, T, f], zeros at padding."""
        out = x.new_zeros(self.b * self.t, x.shape[-1]).index_copy(0, self.tok, x)
        return out.view(self.b, self.t, x.shape[-1])

    def pack(self, y: torch.Tensor) -> torch.Tensor:
        """[B, T, f] -> [N, f]: the tokens' rows."""
        return y.reshape(self.b * self.t, y.shape[-1]).index_select(0, self.tok)


class CausalSelfAttention(nn.Module):
    """Multi-head softmax attention (SASRec, Kang & McAuley 2018) through fused SDPA.

    prenorm: q, k, v from x, then an output projection. reference (the SASRec code's): q from
    x, k and v from kv, dropout on the attention weights, no output projection.
    """

    def __init__(self, cfg: GenRecConfig):
        super().__init__()
        d, self.n_head = cfg.d_model, cfg.n_head
        self.reference = cfg.sasrec_layout == "reference"
        self.p_drop = cfg.dropout if self.reference else 0.0
        if self.reference:
            self.q, self.kv = nn.Linear(d, d), nn.Linear(d, 2 * d)
        else:
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor | None = None,
                ctx: tuple[torch.Tensor, torch.Tensor] | None = None,
                packing: Packing | None = None):
        """x (and kv) [B, T, d], or [N, d] tokens with their packing -> (y like x, (k, v))."""
        d = x.shape[-1]
        # packed: the projections run on the tokens, attention needs them in [B, T]
        pad = (lambda z: z) if packing is None else packing.pad
        if self.reference:
            q = pad(linear(self.q, x))
            k, v = pad(linear(self.kv, kv)).split(d, dim=-1)
        else:
            q, k, v = pad(linear(self.qkv, x)).split(d, dim=-1)
        b, t = q.shape[:2]
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        keys, values = with_context(k, v, ctx)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,  # [B, h, T, d/h]
                                           dropout_p=self.p_drop if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, d)
        if packing is not None:
            y = packing.pack(y)
        return (y if self.reference else linear(self.proj, y)), (k, v)


class FeedForward(nn.Module):
    """Point-wise FFN: d -> d_ff -> d with GELU (prenorm), or ReLU and dropout (reference)."""

    def __init__(self, cfg: GenRecConfig):
        super().__init__()
        reference = cfg.sasrec_layout == "reference"
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.act = F.relu if reference else F.gelu
        self.drop = Dropout(cfg.dropout if reference else 0.0)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, self.drop(self.act(linear(self.fc1, x))))


class SASRecBlock(nn.Module):
    """prenorm: x + attn(LN(x)), then x + FFN(LN(x)). reference (kang205/SASRec model.py):
    h = LN(x), x = h + attn(q=h, k=v=x), then h = LN(x), h + FFN(h): each residual adds the
    normalised input, and keys and values come from the un-normalised x."""

    def __init__(self, cfg: GenRecConfig):
        super().__init__()
        self.reference = cfg.sasrec_layout == "reference"
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rel: torch.Tensor, norm: int,
                ctx: tuple[torch.Tensor, torch.Tensor] | None = None,
                packing: Packing | None = None):
        if self.reference:
            h = self.ln1(x)
            a, kv = self.attn(h, mask, x, ctx, packing)
            h = self.ln2(h + a)
            return h + self.drop(self.ffn(h)), kv
        a, kv = self.attn(self.ln1(x), mask, ctx=ctx, packing=packing)
        x = x + self.drop(a)
        return x + self.drop(self.ffn(self.ln2(x))), kv


class HSTUBlock(nn.Module):
    """HSTU (Zhai et al. 2024, "Actions Speak Louder than Words", eq. 1-3).

    U, V, Q, K = SiLU(LN(x) W_uvqk); A = SiLU(Q K^T + rab) / n on the causal, unpadded
    pairs; y = x + W_o(U * LN(A V)). rab is a learned bias per relative position; n is the
    padded length T with right-aligned positions, the table's length seq_len with positions
    from the oldest item (then a position's output does not depend on later ones).
    """

    def __init__(self, cfg: GenRecConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln_in = nn.LayerNorm(cfg.d_model)
        self.uvqk = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.rel_bias = nn.Parameter(torch.zeros(2 * cfg.seq_len - 1))
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rel: torch.Tensor, norm: int,
                ctx: tuple[torch.Tensor, torch.Tensor] | None = None,
                packing: Packing | None = None):
        d = x.shape[-1]
        u, vqk = F.silu(linear(self.uvqk, self.ln_in(x))).split((d, 3 * d), dim=-1)
        if packing is not None:  # U stays per token; V, Q, K go to [B, T] for attention
            vqk = packing.pad(vqk)
        v, q, k = vqk.split(d, dim=-1)
        b, t = q.shape[:2]
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        keys, values = with_context(k, v, ctx)
        rab = self.rel_bias[rel + self.rel_bias.shape[0] // 2]  # [B|1, 1, T, L+T]
        a = F.silu(q @ keys.transpose(-1, -2) + rab) * mask / norm  # [B, h, T, L+T]
        av = (a @ values).transpose(1, 2).reshape(b, t, d)
        if packing is not None:
            av = packing.pack(av)
        return x + self.drop(linear(self.out, u * self.ln_attn(av))), (k, v)
