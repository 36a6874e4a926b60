"""Analytic peak device memory of one benchmark step, per framework and backend.

The estimate counts what each framework really holds at the step's peak, derived from how
the two model files run (not fitted to measurements):

- PyTorch (eager): what autograd saves for backward, op by op (pytorch.org/docs/stable/notes/
  autograd.html "Saved tensors"), with the fused SDPA kernel's own saved set (q, k, v, output,
  logsumexp and the float attention bias: no T x T probabilities; docs of
  torch.nn.functional.scaled_dot_product_attention), autocast's cached low-precision weight
  copies (docs of torch.autocast), dense Adam state and the foreach update's temporary
  (torch/optim/adam.py, _multi_tensor_adam), the fp32 catalog logits and their gradient, and
  the cuBLAS workspace that torch allocates per thread (main and autograd threads).
- JAX: the residuals that jax.grad saves (jax.ad_checkpoint.print_saved_residuals lists them),
  as XLA keeps them: XLA:GPU fuses element-wise residuals into the backward and keeps only
  dot operands and outputs, the softmax's f32 exponentials, the residual stream and the
  dropout masks; XLA:CPU keeps every residual and computes bf16/fp16 dots in f32. Donated
  state is updated in place (no second copy of parameters or optimizer state).

The estimate is an estimate: MEMORY_ESTIMATE_REL_ERROR and MEMORY_ESTIMATE_ABS_ERROR_BYTES
state how far it may be from the measured peak (torch.cuda.max_memory_allocated) or from
XLA's plan (compiled memory_analysis()); tests/recmodels/test_memory_estimate.py holds it to
that on the committed H200 results and on XLA:CPU plans. A point is infeasible only when the
low end of that band is over the device's capacity (exceeds_capacity).
"""

from __future__ import annotations

from dataclasses import dataclass

from recmodels.config import (
    DTYPE_BYTES,
    RANK_CHUNK,
    ConfigError,
    GenRecConfig,
    flops_forward,
    flops_per_step,
    kv_cache_bytes,
    params_dense,
    params_embedding,
    params_total,
    serving_history,
)

MEMORY_ESTIMATE_REL_ERROR = 0.25  # |estimate - measured| <= 25% of the measured peak ...
MEMORY_ESTIMATE_ABS_ERROR_BYTES = 200 * 2**20  # ... or 200 MiB, for small points
# torch's default cuBLAS workspace on Hopper (CUBLAS_WORKSPACE_CONFIG ":4096:8", 32 MiB; 8 MiB
# before sm90), allocated through the caching allocator once per (thread, stream): the
# forward runs on the main thread, backward on autograd's device thread.
CUBLAS_WORKSPACE_BYTES = 32 * 2**20
INT_BYTES = {"torch": 8, "jax": 4}  # batch ids: int64 in torch, int32 in JAX


@dataclass(frozen=True)
class MemoryEstimate:
    """Analytic peak memory of one step, in bytes. An estimate, not a measurement."""

    weights_bytes: int  # parameters and their low-precision copies
    grads_bytes: int  # gradient buffers held at the peak
    optimizer_bytes: int  # optimizer state (and the update's temporaries when it is the peak)
    activations_bytes: int  # saved activations / residuals, working set and the batch
    workspace_bytes: int = 0  # fixed library workspace (cuBLAS)

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.grads_bytes + self.optimizer_bytes
                + self.activations_bytes + self.workspace_bytes)


def error_band(est_bytes: float) -> tuple[float, float]:
    """(low, high): where the real peak of an estimated point lies, by the stated error."""
    slack = max(MEMORY_ESTIMATE_REL_ERROR * est_bytes, MEMORY_ESTIMATE_ABS_ERROR_BYTES)
    return max(0.0, est_bytes - slack), est_bytes + slack


def exceeds_capacity(est_bytes: float, capacity_bytes: float | None) -> bool:
    """The infeasible rule: True only when even the low end of the estimate's error band is
    over capacity. A point inside the band runs, and an OOM there is a measured result."""
    return bool(capacity_bytes) and error_band(est_bytes)[0] > capacity_bytes  # type: ignore[operator]


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# --- PyTorch ------------------------------------------------------------------------------


def _torch_fused_sdpa(cfg: GenRecConfig, device: str) -> bool:
    """Whether SDPA runs a fused kernel. With an attention mask flash is out; CUDA's
    memory-efficient kernel needs d_head a multiple of 8 (bf16/fp16) or 4 (fp32)
    (sdp_utils.cpp, minimum_gemm_alignment); CPU's flash kernel takes any mask and width."""
    if device == "cpu":
        return True
    if device != "cuda":
        return False
    return cfg.d_head % (8 if DTYPE_BYTES[cfg.compute_dtype] == 2 else 4) == 0


def _torch_train_layer(cfg: GenRecConfig, device: str) -> tuple[int, int]:
    """(bytes autograd saves per token and layer, backward working set per token)."""
    d, f, t, h = cfg.d_model, cfg.d_ff, cfg.seq_len, cfg.n_head
    pb, cb = DTYPE_BYTES[cfg.param_dtype], DTYPE_BYTES[cfg.compute_dtype]
    mixed = cb != pb
    lnb = 4 if mixed else pb  # autocast runs layer_norm in fp32
    mk = 1 if cfg.dropout > 0 else 0  # dropout keeps a bool mask
    if cfg.block == "lstm":
        # cuDNN's reserve space: 4 gates, cell and hidden per step, plus the layer input
        return 7 * cb * d + mk * d, 4 * cb * d
    if cfg.block == "hstu":
        sb = max(cb, pb)  # QK^T + the fp32 relative bias promotes to fp32 under autocast
        # ln_in input, uvqk input, SiLU input and output (u/v/q/k views keep it), q k v
        # contiguous copies for the batched matmuls, the LN(AV) input and output, W_o input
        saved = (pb + cb + 8 * cb + 3 * cb + cb + lnb + cb + mk) * d
        saved += (sb + cb) * h * t  # SiLU input (fp32) and the matmul's copy of A
        return saved, 2 * sb * h * t
    # sasrec: ln1 input, qkv input, ..., ln2 input, fc1 input, fc1 and GELU outputs, masks
    saved = (2 * pb + 2 * cb + 2 * mk) * d + 2 * cb * f
    if _torch_fused_sdpa(cfg, device):
        # q k v (the qkv output), the output, logsumexp and the float mask converted from
        # the bool one, last dim padded to 8 (attention.cpp, preprocess_mask)
        return saved + 4 * cb * d + 4 * h + cb * _round_up(t, 8), 2 * cb * f
    # math path (SDPA's composite): on CUDA bf16/fp16 are upcast to fp32 (the default of
    # allow_fp16_bf16_reduction_math_sdp); it saves scaled q, k, v, the T x T probabilities
    # and the reshaped output; backward holds two T x T gradients of one layer
    ab = 4 if device == "cuda" else cb
    qkv = 3 * ab * d if ab != cb else 5 * cb * d  # fp32 copies, or the qkv output + q/k scaled
    return saved + qkv + ab * h * t + cb * d, 2 * ab * h * t


def _torch_infer_token(cfg: GenRecConfig, device: str) -> int:
    """Live bytes per token at the forward's worst op (inference keeps nothing for
    backward; the caller's input, the block's temporaries and the bool mask are live)."""
    d, f, t, h = cfg.d_model, cfg.d_ff, cfg.seq_len, cfg.n_head
    pb, cb = DTYPE_BYTES[cfg.param_dtype], DTYPE_BYTES[cfg.compute_dtype]
    mixed = cb != pb
    lnb = 4 if mixed else pb
    cast = cb * d if mixed else 0  # autocast's copy of a Linear input
    if cfg.block == "lstm":
        return pb * d + cast + 8 * cb * d
    if cfg.block == "hstu":
        sb = max(cb, pb)
        return (pb + lnb) * d + cast + 11 * cb * d + (2 * sb + cb) * h * t + t
    ffn = 2 * pb * d + lnb * d + max(cast + cb * f, 2 * cb * f)
    if _torch_fused_sdpa(cfg, device):
        t8 = _round_up(t, 8)
        attn = (pb + lnb) * d + cast + 4 * cb * d + cb * (t8 + (t if t8 != t else 0))
    else:
        ab = 4 if device == "cuda" else cb
        attn = (pb + lnb) * d + cast + 3 * cb * d + 5 * ab * d + 2 * ab * h * t + cb * t
    return max(ffn, attn) + t  # + the bool mask [B, 1, T, T]


def _torch(cfg: GenRecConfig, b: int, workload: str, optimizer: str,
           device: str) -> MemoryEstimate:
    n, nd = params_total(cfg), params_dense(cfg)
    d, t, c1, r = cfg.d_model, cfg.seq_len, cfg.catalog_size + 1, cfg.negatives
    pb, cb = DTYPE_BYTES[cfg.param_dtype], DTYPE_BYTES[cfg.compute_dtype]
    mixed = cb != pb
    lnb = 4 if mixed else pb
    tokens = b * t
    ws = CUBLAS_WORKSPACE_BYTES if device == "cuda" else 0
    weights = n * pb
    if workload == "infer":
        # Catalog scores: fp32 [B, C+1] and scatter()'s out-of-place copy (exclude_seen).
        # Without grad, autocast caches no weight copy: the table's low-precision copy lives
        # only during the scoring matmul, next to its [B, C+1] output.
        scores = max(b * 8 * c1, cb * c1 * (d + b) if mixed else 0)
        acts = max(tokens * _torch_infer_token(cfg, device), scores) + tokens * 8
        return MemoryEstimate(weights, 0, 0, acts, ws)
    if workload != "train":
        raise ConfigError(f"unknown workload {workload!r}: choose train or infer")
    state = {"adam": 2, "sgd": 0}.get(optimizer)
    if state is None:
        raise ConfigError(f"unknown optimizer {optimizer!r}: choose adam or sgd")
    if mixed:
        weights += cb * (nd + (c1 * d if cfg.loss == "full_softmax" else 0))
    saved_layer, layer_ws = _torch_train_layer(cfg, device)
    mk = 1 if cfg.dropout > 0 else 0
    # embedding dropout mask and padding mask; final LN input and output (h)
    head = (mk * d + 1) + (pb + lnb) * d
    if cfg.loss == "full_softmax":
        head += 4 * c1 + (cb * d if mixed else 0)  # fp32 logits saved by logsumexp
        head_ws = 8 * c1  # the gradients from logsumexp and gather before they are summed
    else:
        rows = (cb * d + cb * r * d) if mixed else pb * r * d  # einsum's (cast) operands
        head += pb * d + rows + 8 * (1 + r)
        head_ws = (8 + (cb + pb) * r) * d
    batch = tokens * (2 + cfg.n_neg) * INT_BYTES["torch"]
    acts = tokens * (cfg.n_layer * saved_layer + head + max(head_ws, layer_ws)) + batch
    table_grads = 2 * pb * c1 * d  # .grad and the next gather's dense grad before the sum
    backward = MemoryEstimate(weights, table_grads, state * n * pb, acts, 2 * ws)
    # the update: all grads, plus foreach Adam's sqrt(exp_avg_sq) list (one param-size temp)
    update = MemoryEstimate(n * pb, n * pb, (state + (1 if state else 0)) * n * pb, batch,
                            2 * ws)
    return max(backward, update, key=lambda m: m.total_bytes)


# --- JAX (XLA) ----------------------------------------------------------------------------


def _jax_train_layer(cfg: GenRecConfig, cpu: bool) -> int:
    """Residual bytes per token and layer that XLA keeps for the backward pass."""
    d, f, t, h = cfg.d_model, cfg.d_ff, cfg.seq_len, cfg.n_head
    cb = 4 if cpu else DTYPE_BYTES[cfg.compute_dtype]
    mk = 1 if cfg.dropout > 0 else 0
    if cfg.block == "lstm":
        # lax.scan's stacked residuals (gates, cell, their nonlinearities: 12 d-vectors per
        # step, fused or not), the input projection [B, T, 4d] and the time-major copy that
        # scan reads, and the layer input (for W_ih's gradient)
        return 21 * cb * d + mk * (1 + cb) * d
    if cpu:  # every residual jax.grad saves (print_saved_residuals), in f32
        if cfg.block == "hstu":
            return (32 + 17 * cb) * d + mk * (1 + cb) * d + (12 + cb) * h * t + 4 * t
        # per LN: centered, 2*centered, normalized (f32) and the matmul input; q k v; the
        # attention output; GELU's four factors; mask, masked scores, exp, probabilities
        return (2 * (12 + cb) + 4 * cb) * d + 2 * mk * (1 + cb) * d + 4 * cb * f \
            + (9 + cb) * h * t
    # XLA:GPU: element-wise residuals are recomputed inside backward fusions (f32 exp, div,
    # rsqrt are cheap there: GpuInstructionFusion::IsExpensive); what stays: one f32 vector
    # per LN (the residual stream), every dot's operands and outputs, dropout masks
    if cfg.block == "hstu":
        return (8 + mk + 10 * cb) * d + 2 * cb * h * t
    # sasrec: + fc1 output and GELU output, the f32 exponentials of the softmax (its VJP
    # residual, made by the reduction fusion) and the probabilities in compute dtype
    return (8 + 6 * cb + 2 * mk) * d + 2 * cb * f + (4 + cb) * h * t


def _jax_infer_token(cfg: GenRecConfig, cpu: bool) -> int:
    """Live bytes per token at the forward's worst fusion (no residuals in inference)."""
    d, f, t, h = cfg.d_model, cfg.d_ff, cfg.seq_len, cfg.n_head
    cb = 4 if cpu else DTYPE_BYTES[cfg.compute_dtype]
    tt = (3 * 4 if cpu else 2 * cb) * h * t  # CPU: scores, exp and probabilities unfused
    if cfg.block == "lstm":
        return 4 * d + 4 * cb * d + 2 * cb * d
    if cfg.block == "hstu":
        return 4 * d + 9 * cb * d + tt
    return max(4 * d + 4 * cb * d + tt, 8 * d + cb * d + 2 * cb * f)


def _jax(cfg: GenRecConfig, b: int, workload: str, optimizer: str,
         device: str) -> MemoryEstimate:
    n, nd = params_total(cfg), params_dense(cfg)
    d, t, c1, r = cfg.d_model, cfg.seq_len, cfg.catalog_size + 1, cfg.negatives
    pb, cb = DTYPE_BYTES[cfg.param_dtype], DTYPE_BYTES[cfg.compute_dtype]
    cpu = device == "cpu"
    tokens = b * t
    weights = n * pb + (cb * nd if cb != pb else 0)  # astype(compute) copies of the matrices
    if workload == "infer":
        # the catalog scores: the dot's output, then f32 (updated in place by the scatter);
        # XLA's TopK keeps no copy of them
        xb = 4 if cpu else cb  # XLA:CPU's bf16 dot writes f32
        scores = b * (xb + 4 if xb != 4 else 4) * c1
        weights += cb * c1 * d if cb != pb else 0
        acts = max(tokens * _jax_infer_token(cfg, cpu), scores) + tokens * INT_BYTES["jax"]
        return MemoryEstimate(weights, 0, 0, acts)
    if workload != "train":
        raise ConfigError(f"unknown workload {workload!r}: choose train or infer")
    state = {"adam": 2, "sgd": 0}.get(optimizer)
    if state is None:
        raise ConfigError(f"unknown optimizer {optimizer!r}: choose adam or sgd")
    mk = 1 if cfg.dropout > 0 else 0
    xb = 4 if cpu else cb
    # embedding dropout (mask, and on CPU its f32 output); final LN (CPU: its three f32
    # residuals, GPU: one) and h; then the loss head's residuals
    head = mk * d + (4 * mk * d if cpu else 0) + (16 if cpu else 8) * d
    if cfg.loss == "full_softmax":
        head += 4 * c1 + (xb * d if xb != 4 else 0)  # logsumexp's f32 exp(logits - max)
        head_ws = (4 + xb) * c1  # the logits' gradient, f32 and in compute dtype
        if cb != pb:
            weights += cb * c1 * d
    else:
        head += 4 * d + (xb * d if xb != 4 else 0) + xb * r * d + 8 * (1 + r)  # rows, scores
        head_ws = 0
    batch = tokens * (2 + cfg.n_neg) * INT_BYTES["jax"]
    acts = tokens * (cfg.n_layer * _jax_train_layer(cfg, cpu) + head + head_ws) + batch
    table_grad = 4 * c1 * d  # scatter-add of the three gathers' gradients into the table
    backward = MemoryEstimate(weights, table_grad, state * n * pb, acts)
    update = MemoryEstimate(n * pb, n * 4, state * n * pb, batch)  # fused, in place
    return max(backward, update, key=lambda m: m.total_bytes)


def _serving(cfg: GenRecConfig, b: int, workload: str, framework: str, device: str, *,
             n_candidates: int = 2048, gen_steps: int = 4, beam_width: int = 16,
             chunk: int = RANK_CHUNK) -> MemoryEstimate:
    """The serving steps (recmodels/*/kv_cache.py): the weights, the KV cache, and the largest
    working set of one pass. JAX's checked against XLA:CPU plans (within 25%,
    tests/recmodels/test_memory_estimate.py); torch's not yet measured."""
    pb, cb = DTYPE_BYTES[cfg.param_dtype], DTYPE_BYTES[cfg.compute_dtype]
    d, f, h, t, c1 = cfg.d_model, cfg.d_ff, cfg.n_head, cfg.seq_len, cfg.catalog_size + 1
    weights = params_total(cfg) * pb + (params_dense(cfg) * cb if cb != pb else 0)
    ws = CUBLAS_WORKSPACE_BYTES if framework == "torch" and device == "cuda" else 0
    hist = serving_history(cfg, workload, gen_steps)
    jax = framework == "jax"

    def pass_bytes(rows: int, queries: int, keys: int) -> int:
        """One pass of `queries` positions per row over `keys` keys: the residual stream,
        q k v, the FFN's hidden units, fp32 attention scores and their mask (HSTU: and the
        relative bias gathered per query and key)."""
        attn = h * keys * 4 + keys + (keys * 4 if cfg.block == "hstu" else 0)
        return rows * queries * ((6 * d + f) * cb + attn)

    if workload == "rank":
        m = min(chunk, n_candidates)
        cache = kv_cache_bytes(cfg, b, hist)
        # a pass's keys and values: the cache concatenated with its own (one block's)
        acts = max(pass_bytes(b, hist, hist), pass_bytes(b, m, hist + m)
                   + 2 * b * (hist + m) * d * cb) + b * n_candidates * (4 + 8)
        return MemoryEstimate(weights, 0, 0, cache + acts, ws)
    step = pass_bytes(b * (beam_width if workload == "generate" else 1), 1, t + 1)
    if workload == "update":
        # the cache (JAX: and the new one decode returns), one position, the catalog scores
        acts = kv_cache_bytes(cfg, b, t) * (2 if jax else 1) + step + b * c1 * 4
        return MemoryEstimate(weights, 0, 0, acts, ws)
    rows = b * beam_width
    # the beams' cache (torch: and beam search's reordered copy; XLA reorders in place), and
    # the catalog scores with their log-softmax (torch: and the running sums)
    cache = kv_cache_bytes(cfg, rows, t) * (1 if jax else 2)
    acts = max(pass_bytes(b, hist, hist), step + (2 if jax else 3) * rows * c1 * 4)
    return MemoryEstimate(weights, 0, 0, cache + acts, ws)


def memory_estimate(cfg: GenRecConfig, batch_size: int, workload: str = "train",
                    optimizer: str = "adam", framework: str = "torch",
                    device: str = "cuda", **serving) -> MemoryEstimate:
    """Peak device memory of one benchmark step (train: forward, backward, optimizer update;
    infer: forward, catalog scores, top-k; rank, generate, update: see _serving, whose
    keyword arguments `serving` are), for `framework` on a `device` kind
    (cpu | cuda | tpu | mps; JAX on tpu is taken as XLA:GPU's fusion)."""
    if workload in ("rank", "generate", "update"):
        if framework not in ("torch", "jax"):
            raise ConfigError(f"unknown framework {framework!r}: choose torch or jax")
        return _serving(cfg, batch_size, workload, framework, device, **serving)
    if framework == "torch":
        return _torch(cfg, batch_size, workload, optimizer, device)
    if framework == "jax":
        return _jax(cfg, batch_size, workload, optimizer, device)
    raise ConfigError(f"unknown framework {framework!r}: choose torch or jax")


def describe(cfg: GenRecConfig, batch_size: int = 128) -> dict:
    """The analytic cost summary the CLI and the harness print (all values analytic)."""
    return {
        "params_dense": params_dense(cfg),
        "params_embedding": params_embedding(cfg),
        "params_total": params_total(cfg),
        "flops_forward_train": flops_forward(cfg, batch_size, "train"),
        "flops_train_step": flops_per_step(cfg, batch_size, "train"),
        "flops_infer_step": flops_per_step(cfg, batch_size, "infer"),
        # torch on CUDA: the memory estimate depends on the framework and device kind
        "est_mem_train_bytes": memory_estimate(cfg, batch_size, "train").total_bytes,
        "est_mem_infer_bytes": memory_estimate(cfg, batch_size, "infer").total_bytes,
        "batch_size": batch_size,
    }
