"""GenRec configuration, named presets, and the analytic cost model.

One frozen dataclass describes a model; everything the harness needs to know about a
config's cost (parameter counts, FLOPs, bytes moved, memory) is computed here, once, from
the config alone, so that both frameworks and every report agree on the same numbers.

FLOP convention: one multiply-add = 2 FLOPs; matmuls and the attention score/value products
are counted; norms, activations, softmax and embedding gathers are not (gathers are bytes).
Backward = 2 x forward for every matmul (Kaplan et al. 2020, "Scaling Laws", sec. 2.1), so a
training step is 3 x forward FLOPs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from recmodels.errors import InputError

BLOCKS = ("sasrec", "hstu", "lstm")
SASREC_LAYOUTS = ("prenorm", "reference")
POSITIONS = ("right", "left")
LOSSES = ("bce", "sampled_softmax", "full_softmax")
DTYPES = ("fp32", "bf16", "fp16")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
WORKLOADS = ("train", "infer", "rank", "generate", "update")
RANK_CHUNK = 2048  # rank's candidates per micro-batch (recmodels/*/kv_cache.py)


class ConfigError(InputError):
    """An impossible or unknown configuration value."""


@dataclass(frozen=True)
class GenRecConfig:
    d_model: int = 50  # width of item/position embeddings and of every block
    n_layer: int = 2  # number of blocks (LSTM layers for block="lstm")
    n_head: int = 1  # attention heads (sasrec, hstu); d_model must divide evenly
    d_ff: int = 50  # hidden width of the point-wise FFN (sasrec only)
    seq_len: int = 50  # T: the most recent T items of a user are the input
    catalog_size: int = 10_000  # C: item ids are 1..C, 0 is padding
    block: str = "sasrec"  # "sasrec" | "hstu" | "lstm"
    # block="sasrec" only. "prenorm": x + W_o attn(LN(x)), x + FFN_GELU(LN(x)) (GPT-2's
    # block). "reference": the SASRec code's (kang205/SASRec): h = LN(x), h + attn(q=h,
    # k=v=x) with dropout on the weights and no W_o, then h = LN(.), h + FFN_ReLU(h).
    # "prenorm" is the default here so that weight files written before the field existed
    # (which lack it) load as what they are.
    sasrec_layout: str = "prenorm"
    # Which row of the position table each item takes. "right": the newest item at seq_len-1
    # (every append moves all positions). "left": the oldest at 0, counting forward, so an
    # appended item leaves the others in place: what a KV cache needs (generation, updates).
    # HSTU then divides its attention by seq_len, not by the padded length.
    positions: str = "right"
    loss: str = "bce"  # "bce" | "sampled_softmax" | "full_softmax"
    n_neg: int = 1  # sampled negatives per position (bce: SASRec uses 1)
    temperature: float = 1.0  # logit divisor for sampled_softmax
    dropout: float = 0.2  # embedding and residual dropout (+ attention weights, FFN: reference)
    param_dtype: str = "fp32"  # storage dtype of parameters (and optimizer state)
    compute_dtype: str = "fp32"  # dtype of matmuls: "fp32" | "bf16" | "fp16" (mixed precision)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "n_head", "d_ff", "seq_len", "catalog_size", "n_neg"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.block not in BLOCKS:
            raise ConfigError(f"unknown block {self.block!r}: choose one of {', '.join(BLOCKS)}")
        if self.sasrec_layout not in SASREC_LAYOUTS:
            raise ConfigError(f"unknown sasrec_layout {self.sasrec_layout!r}: choose one of "
                              f"{', '.join(SASREC_LAYOUTS)}")
        if self.positions not in POSITIONS:
            raise ConfigError(f"unknown positions {self.positions!r}: choose one of "
                              f"{', '.join(POSITIONS)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(
                    f"unknown {name} {getattr(self, name)!r}: choose one of {', '.join(DTYPES)}"
                )
        if self.param_dtype == "fp16":
            # Adam's eps (1e-8) rounds to 0 in fp16: the first step divides 0 by 0 (NaN)
            raise ConfigError("param_dtype fp16 is not supported: Adam's state cannot be held "
                              "in fp16; keep param_dtype fp32 and set compute_dtype fp16")
        if self.param_dtype != "fp32" and self.compute_dtype != self.param_dtype:
            # torch.autocast only lowers: it cannot compute in fp32 (or fp16) on bf16 weights
            raise ConfigError(f"param_dtype {self.param_dtype} needs compute_dtype "
                              f"{self.param_dtype}, got {self.compute_dtype}; for mixed "
                              "precision keep param_dtype fp32")
        if self.block != "lstm" and self.d_model % self.n_head:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}: "
                "pick a head count that divides d_model"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def negatives(self) -> int:
        """Sampled negatives per position the loss actually uses (0 for full softmax)."""
        return 0 if self.loss == "full_softmax" else self.n_neg

    def replace(self, **changes) -> GenRecConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


# The ladder the harness sweeps. `tiny` has the SASRec paper's sizes (Kang & McAuley 2018:
# d=50, 2 blocks, 1 head, maxlen 50, dropout 0.5 on Amazon data); its code's block is
# sasrec_layout="reference", not the default: on Games-shaped data the two layouts reach the
# same HR@10/NDCG@10 (README, "The reference model"), and a new default would change what
# every tiny benchmark point measures under the same point id. The others follow the GPT
# shape (d_ff = 4d) with catalogs of production-like size; `xl` is ~1B parameters
# (0.68B dense + 0.31B embedding) with a 200k catalog.
PRESETS: dict[str, GenRecConfig] = {
    "tiny": GenRecConfig(d_model=50, n_layer=2, n_head=1, d_ff=50, seq_len=50,
                         catalog_size=23_715, dropout=0.5),
    "small": GenRecConfig(d_model=256, n_layer=4, n_head=4, d_ff=1024, seq_len=200,
                          catalog_size=100_000, dropout=0.2),
    "base": GenRecConfig(d_model=512, n_layer=8, n_head=8, d_ff=2048, seq_len=200,
                         catalog_size=100_000, dropout=0.1),
    "large": GenRecConfig(d_model=1024, n_layer=16, n_head=16, d_ff=4096, seq_len=512,
                          catalog_size=200_000, dropout=0.1),
    "xl": GenRecConfig(d_model=1536, n_layer=24, n_head=16, d_ff=6144, seq_len=512,
                       catalog_size=200_000, dropout=0.1),
}


def preset(name: str, **overrides) -> GenRecConfig:
    """A named preset with optional field overrides (catalog_size, seq_len, block, ...)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def padding_invariant(cfg: GenRecConfig) -> bool:
    """Whether a batch's leading columns that are padding in every row can be dropped without
    changing its loss or gradients (splits.trim_padding): true for SASRec blocks and for HSTU
    with positions from the oldest item. Not for HSTU with right-aligned positions (its
    attention divisor is the padded width) or the LSTM (padding steps move its state)."""
    return cfg.block == "sasrec" or (cfg.block == "hstu" and cfg.positions == "left")


def parse_overrides(items: list[str]) -> dict:
    """["n_head=3", "dropout=0.1"] -> {"n_head": 3, "dropout": 0.1}, typed by the field."""
    fields = {f.name: f for f in dataclasses.fields(GenRecConfig)}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ConfigError(f"bad config override {item!r}: write FIELD=VALUE with FIELD one "
                              f"of {', '.join(fields)}")
        kind = type(fields[key].default)
        try:
            out[key] = kind(text.strip())
        except ValueError:
            what = {"int": "an integer", "float": "a number", "str": "a string"}.get(
                kind.__name__, f"a {kind.__name__}")
            raise ConfigError(f"bad config override {item!r}: {key} takes {what}, "
                              f"got {text!r}") from None
    return out


# ---------------------------------------------------------------------------------------
# Analytic cost. Everything below is a pure function of (config, batch size, workload).


def params_embedding(cfg: GenRecConfig) -> int:
    """Item table (C+1 rows, row 0 = padding) plus learned positions (attention blocks)."""
    positions = 0 if cfg.block == "lstm" else cfg.seq_len * cfg.d_model
    return (cfg.catalog_size + 1) * cfg.d_model + positions


def params_dense(cfg: GenRecConfig) -> int:
    """Every parameter outside the embedding tables (the output layer is tied: no extra)."""
    d, f = cfg.d_model, cfg.d_ff
    ln = 2 * d
    if cfg.block == "sasrec":
        # ln1, qkv (3d x d + 3d), proj (d x d + d), ln2, fc1 (f x d + f), fc2 (d x f + d);
        # the reference layout splits qkv into q (d x d + d) and kv (2d x d + 2d): the same
        # count, and has no proj
        proj = 0 if cfg.sasrec_layout == "reference" else d * d + d
        per_block = ln + (3 * d * d + 3 * d) + proj + ln + (f * d + f) + (d * f + d)
    elif cfg.block == "hstu":
        # ln_in, uvqk (4d x d + 4d), relative bias table (2T-1), ln_attn, out (d x d + d)
        per_block = ln + (4 * d * d + 4 * d) + (2 * cfg.seq_len - 1) + ln + (d * d + d)
    else:
        # torch.nn.LSTM layout: weight_ih (4d x d), weight_hh (4d x d), two 4d biases
        per_block = 2 * (4 * d * d) + 2 * (4 * d)
    return cfg.n_layer * per_block + ln  # + final LayerNorm


def params_total(cfg: GenRecConfig) -> int:
    return params_dense(cfg) + params_embedding(cfg)


def _trunk_flops_per_token(cfg: GenRecConfig, keys: int | None = None) -> int:
    """Forward FLOPs of all blocks for one position attending to `keys` keys (default: a
    length-T sequence's T)."""
    d, f, t = cfg.d_model, cfg.d_ff, cfg.seq_len if keys is None else keys
    if cfg.block == "sasrec":
        # qkv 6d^2 + proj 2d^2 + FFN 4df; QK^T and AV over all T keys: 2*2*T*d. The causal
        # mask halves the useful work, but dense kernels (and torch's flop counter) do all T.
        # The reference layout has no proj.
        proj = 0 if cfg.sasrec_layout == "reference" else 2 * d * d
        per_layer = 6 * d * d + proj + 4 * d * f + 4 * t * d
    elif cfg.block == "hstu":
        # uvqk 8d^2 + out 2d^2 + QK^T and AV 4Td (HSTU, Zhai et al. 2024, eq. 1-3)
        per_layer = 10 * d * d + 4 * t * d
    else:
        # input and recurrent matmuls: 2 * (d x 4d) each
        per_layer = 16 * d * d
    return cfg.n_layer * per_layer


def _head_flops_train_per_token(cfg: GenRecConfig) -> int:
    """Forward FLOPs of the tied output layer for one training position, by loss."""
    if cfg.loss == "full_softmax":
        return 2 * cfg.d_model * (cfg.catalog_size + 1)
    return 2 * cfg.d_model * (1 + cfg.n_neg)  # the positive and its sampled negatives


def flops_forward(cfg: GenRecConfig, batch_size: int, workload: str = "train") -> int:
    """Forward FLOPs for one batch.

    train: the trunk over B x T positions and the training loss head at every position.
    infer: the trunk over B x T positions, then the last position scored against the whole
    catalog (C+1 columns, padding included as the kernels compute it).
    """
    tokens = batch_size * cfg.seq_len
    trunk = tokens * _trunk_flops_per_token(cfg)
    if workload == "train":
        return trunk + tokens * _head_flops_train_per_token(cfg)
    if workload == "infer":
        return trunk + batch_size * 2 * cfg.d_model * (cfg.catalog_size + 1)
    raise ConfigError(f"unknown workload {workload!r}: choose train or infer")


def serving_history(cfg: GenRecConfig, workload: str, gen_steps: int = 4) -> int:
    """Items of history in a serving step: the history and what follows it fill the seq_len
    positions (rank's candidate and update's new item take one, generate's later items
    gen_steps - 1)."""
    return cfg.seq_len - (gen_steps - 1 if workload == "generate" else 1)


def flops_serving(cfg: GenRecConfig, batch_size: int, workload: str, *,
                  n_candidates: int = 2048, gen_steps: int = 4, beam_width: int = 16,
                  chunk: int = RANK_CHUNK) -> dict[str, int]:
    """FLOPs of the serving steps, as recmodels/*/kv_cache.py executes them, in parts:
    prefill (the history's positions, attending causally; for generate also its first
    catalog scoring), decode (all cached steps) and score (rank's candidate dot products).
    A position appended to a cache of L columns attends to L + m keys (the whole capacity,
    masked where empty, and the m positions of its own pass).

    rank: history of T-1, then K candidates in micro-batches of m = chunk, each attending to
      the history and its own micro-batch (masked to itself); 2dK to score them.
    generate: history of T-S+1 (capacity T), then S-1 decode steps over B x W beams, each
      scoring the catalog (C+1 columns).
    update: one decode step over a cached history of T-1 (capacity T), scoring the catalog.
    """
    if cfg.block == "lstm":
        raise ConfigError("the serving workloads need an attention block, not lstm")
    d, c1, t = cfg.d_model, cfg.catalog_size + 1, cfg.seq_len
    hist = serving_history(cfg, workload, gen_steps)
    prefill = hist * _trunk_flops_per_token(cfg, hist)
    if workload == "rank":
        k, parts = n_candidates, []
        while k > 0:
            parts.append(min(chunk, k))
            k -= parts[-1]
        cands = sum(m * _trunk_flops_per_token(cfg, hist + m) for m in parts)
        return {"prefill": batch_size * prefill, "decode": batch_size * cands,
                "score": batch_size * 2 * d * n_candidates}
    step = _trunk_flops_per_token(cfg, t + 1) + 2 * d * c1  # capacity T, plus itself
    if workload == "generate":
        return {"prefill": batch_size * (prefill + 2 * d * c1),
                "decode": batch_size * beam_width * (gen_steps - 1) * step, "score": 0}
    if workload == "update":
        return {"prefill": 0, "decode": batch_size * step, "score": 0}
    raise ConfigError(f"unknown workload {workload!r}: choose one of {', '.join(WORKLOADS)}")


def flops_per_step(cfg: GenRecConfig, batch_size: int, workload: str = "train",
                   **serving) -> int:
    """FLOPs of one benchmark step: forward + backward (2x) for train, forward for infer,
    the serving step's parts summed (keyword arguments: flops_serving's)."""
    if workload in ("rank", "generate", "update"):
        return sum(flops_serving(cfg, batch_size, workload, **serving).values())
    fwd = flops_forward(cfg, batch_size, workload)
    return 3 * fwd if workload == "train" else fwd


def kv_cache_bytes(cfg: GenRecConfig, rows: int, columns: int) -> int:
    """Keys and values of every block for `rows` sequences of `columns` positions."""
    return 2 * cfg.n_layer * rows * columns * cfg.d_model * DTYPE_BYTES[cfg.compute_dtype]


def _traffic_elems_per_token(cfg: GenRecConfig) -> int:
    """Activation elements a step writes and reads per position and layer (for bytes moved;
    the memory held at the peak is recmodels.memory's business)."""
    d, f, t, h = cfg.d_model, cfg.d_ff, cfg.seq_len, cfg.n_head
    if cfg.block == "sasrec":
        # ln1 in/out, q k v, attention out, proj out, ln2 in/out, fc1 out, gelu out, and the
        # T x T probabilities per head
        return 8 * d + 2 * f + h * t
    if cfg.block == "hstu":
        # ln_in, uvqk pre/post SiLU (8d), scores pre/post SiLU per head (2hT), AV, LN(AV),
        # the gated product, out
        return 13 * d + 2 * h * t
    return 10 * d  # per step: input, 4 gates pre/post nonlinearity, c, h


def _serving_bytes(cfg: GenRecConfig, b: int, workload: str, weights: int, *,
                   n_candidates: int = 2048, gen_steps: int = 4, beam_width: int = 16,
                   chunk: int = RANK_CHUNK) -> int:
    """Each pass reads the weights once and the KV cache it attends to once, writes the
    cache it fills, and writes and reads its activations; catalog scores are fp32."""
    a_bytes, c1, t = DTYPE_BYTES[cfg.compute_dtype], cfg.catalog_size + 1, cfg.seq_len
    hist = serving_history(cfg, workload, gen_steps)
    act = _traffic_elems_per_token(cfg) * cfg.n_layer * a_bytes
    if workload == "rank":
        passes = -(-n_candidates // chunk)
        return (weights * (1 + passes) + kv_cache_bytes(cfg, b, hist) * (1 + passes)
                + 2 * act * b * (hist + n_candidates)
                + b * n_candidates * (cfg.d_model * a_bytes + 4))  # candidate rows, scores
    step_rows = b * (beam_width if workload == "generate" else 1)
    step = (weights + kv_cache_bytes(cfg, step_rows, t) + 2 * act * step_rows
            + 2 * step_rows * c1 * 4)
    if workload == "update":
        return step
    prefill = weights + kv_cache_bytes(cfg, b, hist) + 2 * act * b * hist + 2 * b * c1 * 4
    return prefill + (gen_steps - 1) * step


def bytes_per_step(cfg: GenRecConfig, batch_size: int, workload: str = "train",
                   optimizer: str = "adam", **serving) -> int:
    """Minimum DRAM traffic of one step, in bytes: an estimate for roofline plots.

    Each weight is read once per forward (and once more in backward); training also writes
    the gradient and reads/writes parameter and optimizer state once in the update (dense
    Adam touches the whole item table every step). Activations are written once and read
    once; the scores/logits of the output layer likewise.
    """
    n = params_total(cfg)
    p_bytes, a_bytes = DTYPE_BYTES[cfg.param_dtype], DTYPE_BYTES[cfg.compute_dtype]
    tokens = batch_size * cfg.seq_len
    weights = n * p_bytes + (n * a_bytes if cfg.compute_dtype != cfg.param_dtype else 0)
    if workload in ("rank", "generate", "update"):
        return _serving_bytes(cfg, batch_size, workload, weights, **serving)
    if workload == "infer":
        acts = tokens * _traffic_elems_per_token(cfg) * a_bytes
        return weights + 2 * (acts + batch_size * (cfg.catalog_size + 1) * 4)
    if workload != "train":
        raise ConfigError(f"unknown workload {workload!r}: choose train or infer")
    opt_state = {"adam": 2, "sgd": 0}.get(optimizer)
    if opt_state is None:
        raise ConfigError(f"unknown optimizer {optimizer!r}: choose adam or sgd")
    acts = cfg.n_layer * tokens * _traffic_elems_per_token(cfg) * a_bytes
    acts += tokens * 2 * cfg.d_model * a_bytes  # embedding sum and final LN
    if cfg.loss == "full_softmax":
        acts += tokens * (cfg.catalog_size + 1) * 4 * 2  # fp32 logits and their gradient
    else:
        acts += tokens * (1 + cfg.n_neg) * (cfg.d_model + 2) * a_bytes  # gathered rows, logits
    grads, opt = n * p_bytes, n * p_bytes * opt_state
    update = 2 * (weights + opt) + grads
    return 2 * weights + grads + update + 2 * acts


def human_bytes(n: float, per_s: bool = False) -> str:
    """Bytes in binary units, ``"1.5 GiB"``, ``"3.87 TiB/s"``: every byte figure recbench
    prints uses this, so GB never stands next to GiB."""
    unit = "/s" if per_s else ""
    for name, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            value = n / scale  # 1000-1023 of a unit: whole numbers, never "1.02e+03"
            return f"{value:.3g} {name}{unit}" if abs(value) < 999.5 else \
                f"{value:.0f} {name}{unit}"
    return f"{n:.0f} B{unit}"


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (SI prefixes), for tables."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{prefix}{unit}"
    return f"{n:.3g}{unit}" if not float(n).is_integer() else f"{int(n)}{unit}"
