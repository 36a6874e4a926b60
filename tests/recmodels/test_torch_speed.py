"""The torch train step's fast paths compute what the plain step computes: trimmed and packed
batches, fused Adam, counter-based dropout, torch.compile modes (issue 15)."""

import numpy as np
import pytest
import torch

from recmodels import parity
from recmodels import torch_model as tm
from recmodels.config import padding_invariant, preset
from recmodels.splits import trim_padding
from recmodels.torch import blocks
from recmodels.torch.engine import packed, prepare


def tiny(**kw):
    return preset("tiny", **{"catalog_size": 300, "seq_len": 16, "dropout": 0.0, **kw})


def short_batch(cfg, b=8, longest=7, seed=0):
    """parity's batch with every history at most `longest` items: mostly padding."""
    batch = parity.parity_batch(cfg, b, seed)
    for v in batch.values():
        v[:, : cfg.seq_len - longest] = 0
    return batch


def test_trim_padding_drops_only_columns_no_row_uses():
    seq = np.zeros((3, 12), np.int64)
    seq[0, -3:], seq[1, -5:] = 1, 2
    batch = {"seq": seq, "pos": seq.copy(), "neg": np.stack([seq] * 2, -1), "user": np.arange(3)}
    exact = trim_padding(batch, 1)
    assert exact["seq"].shape == (3, 5) and exact["neg"].shape == (3, 5, 2)
    assert (exact["seq"] == seq[:, -5:]).all() and exact["user"] is batch["user"]
    assert np.shares_memory(exact["seq"], seq)  # views, not copies
    assert trim_padding(batch, 8)["seq"].shape == (3, 8)  # rounded up to the multiple
    assert trim_padding(batch, 16) is batch  # 16 > 12: nothing to drop
    empty = {"seq": np.zeros((2, 9), np.int64), "pos": np.zeros((2, 9), np.int64)}
    assert trim_padding(empty, 1)["seq"].shape == (2, 1)  # never zero-wide


def test_padding_invariant_configs():
    assert padding_invariant(tiny()) and padding_invariant(tiny(sasrec_layout="reference"))
    assert padding_invariant(tiny(block="hstu", positions="left"))
    assert not padding_invariant(tiny(block="hstu"))  # right-aligned: divides by the width
    assert not padding_invariant(tiny(block="lstm"))  # padding steps move the LSTM's state


def test_packed_lists_every_position_with_an_item_or_a_target():
    seq = np.array([[0, 0, 3, 4], [0, 5, 6, 7]])
    pos = np.array([[0, 0, 4, 9], [0, 6, 7, 0]])  # a padded target at [1, 3] is still kept
    tok = packed({"seq": seq, "pos": pos})["tok"]
    assert tok.tolist() == [2, 3, 5, 6, 7]


def test_prepare_packs_except_under_cuda_graphs():
    """Eager: exact widths, packed. Compiled: widths in steps of 8. CUDA graphs (recorded
    per size) on a GPU: trimmed but not packed; on CPU those modes have no CUDA graphs."""
    cfg = tiny()
    batch = short_batch(cfg, longest=5)
    eager = prepare(batch, cfg, "eager", "cpu")
    assert eager["seq"].shape == (8, 5) and "tok" in eager
    assert prepare(batch, cfg, "default", "cuda")["seq"].shape == (8, 8)
    for mode in ("reduce-overhead", "max-autotune"):
        graphs = prepare(batch, cfg, mode, "cuda")
        assert graphs["seq"].shape == (8, 8) and "tok" not in graphs
        assert "tok" in prepare(batch, cfg, mode, "cpu")
    assert prepare(batch, tiny(block="lstm"), "eager", "cpu") is batch


@pytest.mark.parametrize("arch", [{}, {"sasrec_layout": "reference"},
                                  {"block": "hstu", "positions": "left"}],
                         ids=["prenorm", "reference", "hstu-left"])
@pytest.mark.parametrize("loss", ["bce", "sampled_softmax", "full_softmax"])
def test_packed_step_equals_the_padded_step(arch, loss):
    """Numpy batches take the trimmed, packed path; put() tensors the padded one. With SGD
    (no division by a gradient's size) three steps agree to rounding."""
    cfg = tiny(loss=loss, **arch)
    sides = [tm.Engine(cfg, optimizer="sgd", lr=0.5, seed=3) for _ in range(2)]
    for i in range(3):
        batch = short_batch(cfg, seed=i)
        fast, plain = float(sides[0].train_step(batch)), float(sides[1].train_step(
            sides[1].put(batch)))
        assert fast == pytest.approx(plain, rel=1e-6)
    a, b = sides[0].state_dict(), sides[1].state_dict()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    moved = tm.Engine(cfg, optimizer="sgd", lr=0.5, seed=3).state_dict()
    assert max(np.abs(a[k] - moved[k]).max() for k in a) > 1e-3  # the steps did train


def test_packing_is_not_used_where_it_would_change_the_loss():
    """HSTU with right-aligned positions divides attention by the padded width: its numpy
    batches must be computed padded (else the loss would change)."""
    cfg = tiny(block="hstu")
    batch = short_batch(cfg)
    e1, e2 = tm.Engine(cfg, seed=1), tm.Engine(cfg, seed=1)
    assert float(e1.train_step(batch)) == float(e2.train_step(e2.put(batch)))


def test_keep_mask_is_bernoulli_and_seeded():
    n = 400_000
    a = blocks.keep_mask(torch.Size([n]), 0.3, torch.tensor(11))
    b = blocks.keep_mask(torch.Size([n]), 0.3, torch.tensor(12))
    sd = (0.3 * 0.7 / n) ** 0.5
    assert abs(a.float().mean().item() - 0.7) < 5 * sd
    assert abs((a & b).float().mean().item() - 0.49) < 5 * sd  # seeds give independent masks
    assert torch.equal(a, blocks.keep_mask(torch.Size([n]), 0.3, torch.tensor(11)))
    # neighbours are not correlated (a counter hash, not a slowly moving sequence)
    assert abs((a[1:] & a[:-1]).float().mean().item() - 0.49) < 5 * sd
    assert blocks.keep_mask(torch.Size([1000]), 0.0, torch.tensor(5)).all()


def test_dropout_scales_and_keeps_its_rate_eager():
    x = torch.ones(200_000)
    y = blocks.dropout(x, 0.25, True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.005 and torch.allclose(y[y != 0], torch.tensor(1 / 0.75))
    assert blocks.dropout(x, 0.25, False) is x


def test_compile_modes_are_checked():
    eng = tm.Engine(tiny())
    with pytest.raises(ValueError, match=r"unknown compile mode 'fast'.*max-autotune"):
        eng.compile("fast")
    eng.compile("eager")
    assert eng.compile_mode == "eager" and eng.compiled_graphs() == 0


def test_compiled_step_agrees_with_eager_and_does_not_recompile():
    """torch.compile of the training loss: the same losses and weights as eager (dropout off,
    SGD), one graph for batches of every width and the epoch's smaller last batch, and a
    counter-based dropout mask that trains when dropout is on."""
    cfg = tiny()
    eager = tm.Engine(cfg, optimizer="sgd", lr=0.5, seed=2)
    comp = tm.Engine(cfg, optimizer="sgd", lr=0.5, seed=2, compile="default")
    assert comp.compile_mode == "default"
    shapes = [(8, 7), (8, 3), (8, 12), (5, 9)]  # widths 8 and 16 after rounding; B 8 and 5
    graphs = []
    for i, (b, longest) in enumerate(shapes):
        batch = short_batch(cfg, b=b, longest=longest, seed=i)
        assert float(comp.train_step(batch)) == pytest.approx(float(eager.train_step(batch)),
                                                              rel=1e-5)
        graphs.append(comp.compiled_graphs())
    assert graphs[-1] == graphs[1] >= 1  # after the first dynamic recompile, no more
    # evaluation (the compiled forward): a smaller last batch compiles nothing new either
    seqs = short_batch(cfg, b=8, seed=9)["seq"]
    np.testing.assert_allclose(comp.score_catalog(seqs), eager.score_catalog(seqs), atol=1e-5)
    after_eval = comp.compiled_graphs()
    comp.score_catalog(seqs[:5])
    assert comp.compiled_graphs() == after_eval
    a, b = comp.state_dict(), eager.state_dict()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


# --- fp32 Linear layers through oneDNN on CPU ------------------------------------------------

needs_onednn = pytest.mark.skipif(not blocks.onednn_linear_available(),
                                  reason="this torch has no oneDNN linear op")


def test_bucket_rows_rounds_up_to_few_sizes():
    for m in [1, 63, 64, 65, 1000, 1150, 3200, 6400, 50_001, 1 << 20]:
        r = blocks.bucket_rows(m)
        assert m <= r <= max(m + 63, m * 1.032), m
        assert r % 64 == 0
    assert blocks.bucket_rows(3200) == 3200 and blocks.bucket_rows(6400) == 6400  # full windows
    assert len({blocks.bucket_rows(m) for m in range(1025, 2049)}) == 16  # not one per m


def _off(monkeypatch):
    monkeypatch.setenv(blocks.ONEDNN_ENV, "0")
    blocks.onednn_linear_available.cache_clear()


@needs_onednn
@pytest.mark.parametrize("rows", [100, 128])  # padded to 128 rows, and as it is
@pytest.mark.parametrize("k, n", [(128, 192), (192, 128)])  # dw = (x^T dy)^T, and dy^T x
def test_onednn_linear_equals_f_linear_forward_and_backward(rows, k, n, monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(k, n)
    x = torch.randn(2, rows // 2, k, requires_grad=True)
    calls = []
    assert blocks.onednn_linear_available()  # its probe runs before the products are counted
    real = blocks._mm_t
    monkeypatch.setattr(blocks, "_mm_t", lambda *a: calls.append(a[0].shape) or real(*a))
    y = blocks.linear(layer, x)
    (y * torch.linspace(-1, 1, n)).sum().backward()
    got = (y.detach(), x.grad, layer.weight.grad, layer.bias.grad)
    assert y.shape == (2, rows // 2, n)
    # all three products by oneDNN; dw's first operand is the narrower of x^T and dy^T (the
    # one _mm_t copies)
    assert calls == [(128, k), (128, n), (min(k, n), 128)]
    assert layer.weight.grad.shape == (n, k) and layer.weight.grad.is_contiguous()
    x.grad = layer.weight.grad = layer.bias.grad = None
    y = torch.nn.functional.linear(x, layer.weight, layer.bias)
    (y * torch.linspace(-1, 1, n)).sum().backward()
    for a, b in zip(got, (y.detach(), x.grad, layer.weight.grad, layer.bias.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_linear_leaves_other_cases_to_the_layer(monkeypatch):
    """Small layers, few rows, bf16, hooks and the opt-out run the layer's own forward."""
    assert blocks.onednn_linear_available()
    monkeypatch.setattr(blocks, "_mm_t", lambda *a: pytest.fail("oneDNN path taken"))
    big = torch.nn.Linear(128, 128)
    blocks.linear(torch.nn.Linear(50, 50), torch.randn(256, 50))  # tiny's d: F.linear
    blocks.linear(big, torch.randn(8, 128))  # fewer than ONEDNN_MIN_ROWS rows
    blocks.linear(big.to(torch.bfloat16), torch.randn(256, 128, dtype=torch.bfloat16))
    hooked = torch.nn.Linear(128, 128)
    seen = []
    hooked.register_forward_hook(lambda *a: seen.append(1))
    blocks.linear(hooked, torch.randn(256, 128))
    assert seen == [1]
    _off(monkeypatch)
    blocks.linear(torch.nn.Linear(128, 128), torch.randn(256, 128))
    blocks.onednn_linear_available.cache_clear()


@needs_onednn
@pytest.mark.parametrize("value", ["0", "false", "off", "no", " 0", "OFF"])
def test_the_onednn_switch_turns_off_in_any_spelling(value, monkeypatch):
    monkeypatch.setenv(blocks.ONEDNN_ENV, value)
    blocks.onednn_linear_available.cache_clear()
    try:
        assert not blocks.onednn_linear_available()
    finally:
        monkeypatch.delenv(blocks.ONEDNN_ENV)
        blocks.onednn_linear_available.cache_clear()
    assert blocks.onednn_linear_available()


def test_a_value_the_onednn_switch_does_not_take_is_an_input_error(monkeypatch):
    from recmodels.errors import InputError

    monkeypatch.setenv(blocks.ONEDNN_ENV, "banana")
    blocks.onednn_linear_available.cache_clear()
    try:
        with pytest.raises(InputError, match=r"^RECBENCH_ONEDNN_LINEAR='banana' is not an "
                                             r"on/off value"):
            blocks.onednn_linear_available()
    finally:
        monkeypatch.delenv(blocks.ONEDNN_ENV)
        blocks.onednn_linear_available.cache_clear()


@needs_onednn
def test_onednn_train_steps_equal_f_linear_steps(monkeypatch):
    """A model with d = 128 (oneDNN's Linear layers), three Adam steps on packed batches
    (new token counts each step, padded to buckets): the same weights as with F.linear."""
    cfg = preset("tiny", catalog_size=300, seq_len=16, dropout=0.0, d_model=128, d_ff=256,
                 n_head=2)
    batches = [short_batch(cfg, b=24, longest=k, seed=k) for k in (5, 9, 13)]

    def run():
        blocks.onednn_linear_available.cache_clear()
        eng = tm.Engine(cfg, seed=0)
        losses = [float(eng.train_step(b)) for b in batches]
        return losses, {k: v.detach().clone() for k, v in eng.model.state_dict().items()}

    fast = run()
    _off(monkeypatch)
    plain = run()
    monkeypatch.delenv(blocks.ONEDNN_ENV)
    blocks.onednn_linear_available.cache_clear()
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5)
    for k in plain[1]:
        torch.testing.assert_close(fast[1][k], plain[1][k], rtol=1e-5, atol=1e-5, msg=k)


@needs_onednn
@pytest.mark.parametrize("rows", [100, 128])
def test_onednn_linear_backward_of_an_input_without_grad(rows):
    """The first layer's input needs no gradient (a bucket-sized one once failed autograd's
    saved-tensor check): only the weights get one, equal to F.linear's."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 128)
    x = torch.randn(rows, 128)
    blocks.linear(layer, x).square().sum().backward()
    got = layer.weight.grad.clone()
    layer.weight.grad = None
    torch.nn.functional.linear(x, layer.weight, layer.bias).square().sum().backward()
    torch.testing.assert_close(got, layer.weight.grad, rtol=1e-5, atol=1e-4)
