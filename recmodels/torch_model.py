"""GenRec in PyTorch: a causal transformer (or LSTM) over item-ID sequences.

Mirrors jax_model.py name for name and in the same order; parameter names are the
state_dict keys on both sides, so one safetensors file loads into either framework.

Shapes: B batch, T sequence length, d model width, h heads, C catalog size, R negatives.
Input sequences are left-padded with item 0, so the most recent item is always at T-1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from recmodels.config import GenRecConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INIT_STD = 0.02  # GPT-2's initialiser for every matrix and embedding


def attention_mask(seq: torch.Tensor) -> torch.Tensor:
    """[B, T] ids -> [B, 1, T, T] bool, True where query t may attend to key s.

    Causal, and padded keys are hidden. Every position also sees itself, so the rows of
    padded queries are never empty (their outputs are ignored by the loss).
    """
    t = seq.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seq.device).tril()
    eye = torch.eye(t, dtype=torch.bool, device=seq.device)
    return (causal & (seq != 0)[:, None, None, :]) | eye


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                kv: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        if self.reference:
            q, (k, v) = self.q(x), self.kv(kv).split(d, dim=-1)
        else:
            q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,  # [B, h, T, d/h]
                                           dropout_p=self.p_drop if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, d)
        return y if self.reference else self.proj(y)


class FeedForward(nn.Module):
    """Point-wise FFN: d -> d_ff -> d with GELU (prenorm), or ReLU and dropout (reference)."""

    def __init__(self, cfg: GenRecConfig):
        super().__init__()
        reference = cfg.sasrec_layout == "reference"
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.act = F.relu if reference else F.gelu
        self.drop = nn.Dropout(cfg.dropout if reference else 0.0)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


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
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.reference:
            h = self.ln1(x)
            h = self.ln2(h + self.attn(h, mask, x))
            return h + self.drop(self.ffn(h))
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.ffn(self.ln2(x)))


class HSTUBlock(nn.Module):
    """HSTU (Zhai et al. 2024, "Actions Speak Louder than Words", eq. 1-3).

    U, V, Q, K = SiLU(LN(x) W_uvqk); A = SiLU(Q K^T + rab) / T on the causal, unpadded
    pairs; y = x + W_o(U * LN(A V)). rab is a learned bias per relative position.
    """

    def __init__(self, cfg: GenRecConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln_in = nn.LayerNorm(cfg.d_model)
        self.uvqk = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.rel_bias = nn.Parameter(torch.zeros(2 * cfg.seq_len - 1))
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.ln_in(x))).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        pos = torch.arange(t, device=x.device)
        rab = self.rel_bias[pos[None, :] - pos[:, None] + self.rel_bias.shape[0] // 2]  # [T, T]
        a = F.silu(q @ k.transpose(-1, -2) + rab) * mask / t  # [B, h, T, T]
        av = (a @ v).transpose(1, 2).reshape(b, t, d)
        return x + self.drop(self.out(u * self.ln_attn(av)))


class GenRec(nn.Module):
    """Item embedding (+ positions) -> blocks (or LSTM) -> final LN; output tied to items."""

    def __init__(self, cfg: GenRecConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.item_emb = nn.Embedding(cfg.catalog_size + 1, d, padding_idx=0)
        if cfg.block == "lstm":
            # The pre-transformer baseline: embedding -> LSTM -> softmax over the catalog.
            self.lstm = nn.LSTM(d, d, num_layers=cfg.n_layer, batch_first=True,
                                dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        else:
            self.pos_emb = nn.Embedding(cfg.seq_len, d)
            block = SASRecBlock if cfg.block == "sasrec" else HSTUBlock
            self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if name.startswith("lstm."):
                bound = 1.0 / math.sqrt(self.cfg.d_model)  # torch.nn.LSTM's own init
                nn.init.uniform_(p, -bound, bound)
            elif name.endswith("bias") or name.endswith("rel_bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=INIT_STD)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, T] item ids -> [B, T, d] hidden states."""
        t = seq.shape[1]
        valid = (seq != 0).unsqueeze(-1)
        x = self.item_emb(seq) * math.sqrt(self.cfg.d_model)
        if self.cfg.block == "lstm":
            x = self.drop(x) * valid
            x, _ = self.lstm(x)
        else:
            x = self.drop(x + self.pos_emb.weight[self.cfg.seq_len - t:]) * valid
            mask = attention_mask(seq)
            for blk in self.blocks:
                x = blk(x, mask)
        return self.ln_f(x)


# --- losses: h [B, T, d], pos [B, T], neg [B, T, R]; positions with pos == 0 are ignored.


def bce_loss(h: torch.Tensor, table: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             cfg: GenRecConfig) -> torch.Tensor:
    """SASRec's loss: -log sigmoid(s_pos) - sum_r log(1 - sigmoid(s_neg_r)), per position."""
    s_pos = (h * table[pos]).sum(-1).float()
    s_neg = torch.einsum("btd,btrd->btr", h, table[neg]).float()
    return F.softplus(-s_pos) + F.softplus(s_neg).sum(-1)


def sampled_softmax_loss(h: torch.Tensor, table: torch.Tensor, pos: torch.Tensor,
                         neg: torch.Tensor, cfg: GenRecConfig) -> torch.Tensor:
    """Cross-entropy of the positive against R uniform negatives (uniform sampling makes the
    logQ correction a constant, so it is omitted)."""
    s_pos = (h * table[pos]).sum(-1, keepdim=True)
    s_neg = torch.einsum("btd,btrd->btr", h, table[neg])
    logits = torch.cat([s_pos, s_neg], dim=-1).float() / cfg.temperature
    return torch.logsumexp(logits, dim=-1) - logits[..., 0]


def full_softmax_loss(h: torch.Tensor, table: torch.Tensor, pos: torch.Tensor,
                      neg: torch.Tensor, cfg: GenRecConfig) -> torch.Tensor:
    """Cross-entropy over the whole catalog; the padding column can never be predicted."""
    logits = (h @ table.T).float()  # [B, T, C+1]
    logits[..., 0] = float("-inf")
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, pos.unsqueeze(-1)).squeeze(-1)


LOSSES = {"bce": bce_loss, "sampled_softmax": sampled_softmax_loss,
          "full_softmax": full_softmax_loss}


def loss_fn(model: GenRec, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean loss over the positions that have a target."""
    h = model(batch["seq"])
    per_pos = LOSSES[model.cfg.loss](h, model.item_emb.weight, batch["pos"], batch["neg"],
                                     model.cfg)
    mask = batch["pos"] != 0
    # where, not a product: full softmax gives inf at padded positions and inf * 0 is nan
    return torch.where(mask, per_pos, 0.0).sum() / mask.sum().clamp(min=1)


# --- scoring


def score_candidates(model: GenRec, seq: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[B, T] histories, [B, K] candidate ids -> [B, K] scores of the last position."""
    h = model(seq)[:, -1]
    return torch.einsum("bd,bkd->bk", h, model.item_emb.weight[candidates]).float()


def score_catalog(model: GenRec, seq: torch.Tensor) -> torch.Tensor:
    """[B, T] histories -> [B, C+1] scores of every item; column 0 (padding) is -inf."""
    scores = (model(seq)[:, -1] @ model.item_emb.weight.T).float()
    scores[:, 0] = float("-inf")
    return scores


def recommend(model: GenRec, seq: torch.Tensor, k: int,
              exclude_seen: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items for each user over the whole catalog -> (scores [B, k], ids [B, k])."""
    scores = score_catalog(model, seq)
    if exclude_seen:
        scores = scores.scatter(1, seq, float("-inf"))
    return torch.topk(scores, k, dim=-1)


# --- optimisation


def make_optimizer(model: GenRec, name: str = "adam", lr: float = 1e-3) -> torch.optim.Optimizer:
    """Adam with SASRec's betas (0.9, 0.98), or plain SGD."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def train_step(model: GenRec, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               autocast_dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Forward, backward and one optimizer step; returns the (unsynchronised) loss."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(batch["seq"].device.type, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
        loss = loss_fn(model, batch)
    if scaler is not None:  # fp16 needs loss scaling; bf16 and fp32 do not
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return loss.detach()


def set_matmul_precision(mode: str) -> None:
    """'highest': fp32 matmuls are fp32; 'tf32': CUDA may use TF32 tensor cores for them.
    (Process-wide, like the framework settings it wraps; no effect on CPU.)"""
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"


class Engine:
    """The small API both frameworks expose: train a step, score, recommend, save/load.

    Takes and returns numpy arrays at its edges; `put` moves a batch to the device once so a
    benchmark can time the step alone.
    """

    framework = "torch"

    def __init__(self, cfg: GenRecConfig, *, seed: int = 0, optimizer: str = "adam",
                 lr: float = 1e-3, device: str = "cpu", matmul_precision: str = "highest"):
        self.cfg = cfg
        self.device = torch.device(device)
        set_matmul_precision(matmul_precision)
        torch.manual_seed(seed)
        self.model = GenRec(cfg).to(self.device, DTYPES[cfg.param_dtype])
        self.optimizer, self.lr = optimizer, lr
        self.opt = make_optimizer(self.model, optimizer, lr)
        mixed = cfg.compute_dtype != cfg.param_dtype
        self.autocast_dtype = DTYPES[cfg.compute_dtype] if mixed else None
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if mixed and cfg.compute_dtype == "fp16" else None)

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.asarray(v, dtype=np.int64)).to(self.device,
                                                                      non_blocking=True)
                for k, v in batch.items()}

    def train_step(self, batch: dict) -> torch.Tensor:
        self.model.train()
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.put(batch)
        return train_step(self.model, self.opt, batch, self.autocast_dtype, self.scaler)

    def _eval(self, fn, *args):
        self.model.eval()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                                    enabled=self.autocast_dtype is not None):
            return fn(self.model, *args)

    def loss(self, batch: dict[str, np.ndarray]) -> float:
        return float(self._eval(loss_fn, self.put(batch)))

    def score_candidates(self, seq: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        d = self.put({"seq": seq, "cand": candidates})
        return self._eval(score_candidates, d["seq"], d["cand"]).cpu().numpy()

    def score_catalog(self, seq: np.ndarray) -> np.ndarray:
        return self._eval(score_catalog, self.put({"seq": seq})["seq"]).cpu().numpy()

    def infer_step(self, seq: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k over the whole catalog for device-resident histories, left on the device."""
        return self._eval(recommend, seq, k)

    def recommend(self, seq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.infer_step(self.put({"seq": seq})["seq"], k)
        return scores.float().cpu().numpy(), ids.cpu().numpy()

    def compile(self) -> None:
        """torch.compile the model in place (state_dict keys unchanged)."""
        self.model.compile()

    def quantize_int8(self) -> None:
        """Dynamic int8 quantisation of the Linear and LSTM weights, for CPU inference
        (torch.ao.quantization.quantize_dynamic; the tied catalog scoring stays fp32)."""
        self.model = torch.ao.quantization.quantize_dynamic(
            self.model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)

    def planned_memory_bytes(self, batch: dict | None = None, seq: torch.Tensor | None = None,
                             k: int = 10) -> None:
        """Eager PyTorch plans no memory ahead of time (the JAX engine's XLA plan has no
        counterpart here): None."""
        return None

    def sync(self, value=None):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
        return value

    def all_finite(self) -> bool:
        """Whether every parameter is finite (one reduction, one read back): a diverged run
        has non-finite parameters, a step that fp16 loss scaling skipped does not."""
        return bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all())

    def state_dict(self) -> dict[str, np.ndarray]:
        # .copy(): on CPU .numpy() shares memory with the live parameters
        return {k: v.detach().float().cpu().numpy().copy()
                for k, v in self.model.state_dict().items()}

    def load_state_dict(self, tensors: dict[str, np.ndarray]) -> None:
        own = self.model.state_dict()
        self.model.load_state_dict({k: torch.tensor(np.asarray(v), dtype=own[k].dtype)
                                    for k, v in tensors.items()})
        # Fresh optimizer state, as in JAX: a loaded model's next step starts Adam anew.
        self.opt = make_optimizer(self.model, self.optimizer, self.lr)
