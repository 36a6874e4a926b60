"""train.evaluate's full-catalog protocol against a brute-force ranking of a planted case."""

import numpy as np
import pytest

from recmodels import data as D
from recmodels import splits as S
from recmodels.config import preset
from recmodels.train import evaluate

N_ITEMS, SEQ_LEN = 40, 8


def score_row(last_item: int) -> np.ndarray:
    """The planted model's scores of items 0..C given the last input item: distinct within a
    row, different from user to user."""
    return np.cos(np.arange(N_ITEMS + 1) * 0.7 + last_item)


class FixedScores:
    """An engine whose full-catalog scores are score_row of the last item of the input."""

    cfg = preset("tiny", catalog_size=N_ITEMS, seq_len=SEQ_LEN)

    def score_catalog(self, seq: np.ndarray) -> np.ndarray:
        out = np.stack([score_row(int(s[-1])) for s in seq]).astype(np.float32)
        out[:, 0] = -np.inf
        return out


@pytest.fixture(scope="module")
def sequences():
    """300 users (two evaluation batches of 256 + 44), 4 to 16 items each, drawn from the
    40-item catalog (so histories hold a good share of the top-scored items)."""
    rng = np.random.default_rng(7)
    return [rng.integers(1, N_ITEMS + 1, rng.integers(4, 17)) for _ in range(300)]


def brute_force(sequences, which: str, scores_of, exclude_seen: bool = True):
    """HR@10 and NDCG@10 by sorting each user's candidates: the whole catalog minus the
    items of the user's input history (SASRec), except the target itself. Ties count half
    (the mid-rank)."""
    hits, gains = [], []
    for items in sequences:
        history = list(items[:-1] if which == "test" else items[:-2])
        target = int(items[-1] if which == "test" else items[-2])
        scores = scores_of(history)
        seen = set(history) - {target} if exclude_seen else set()
        cand = np.array([i for i in range(1, N_ITEMS + 1) if i not in seen])
        s = scores[cand]
        order = cand[np.argsort(-s, kind="stable")]
        rank = float(np.flatnonzero(order == target)[0])  # its place in the sorted list
        tied = int(np.sum(s == scores[target]))
        if tied > 1:  # ties (the popularity counts): the mid-rank of the tied block
            rank = np.sum(s > scores[target]) + 0.5 * (tied - 1)
        hits.append(rank < 10)
        gains.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
    return {"hr@10": float(np.mean(hits)), "ndcg@10": float(np.mean(gains))}


@pytest.mark.parametrize("which", ["valid", "test"])
def test_full_protocol_matches_a_brute_force_ranking(sequences, which):
    lengths = np.array([len(s) for s in sequences])
    data = D.Interactions(np.concatenate([[0], np.cumsum(lengths)]), np.concatenate(sequences),
                          n_items=N_ITEMS, name="planted")
    split = S.leave_one_out(data)
    pop = S.popularity(split)
    got = evaluate(FixedScores(), split, which, protocol="full", batch_size=64,
                   max_users=10_000, seed=0, pop=pop)
    assert got["n_users"] == len(sequences)

    def model(history):
        return score_row(history[-1])

    # the popularity baseline counts training items: each user's sequence minus its last two
    counts = np.bincount(np.concatenate([s[:-2] for s in sequences]), minlength=N_ITEMS + 1)

    def popular(history):
        return counts.astype(np.float64)

    want = brute_force(sequences, which, model)
    assert got["model"] == pytest.approx(want, abs=1e-12)
    assert got["popularity"] == pytest.approx(brute_force(sequences, which, popular), abs=1e-12)
    # the planted case has teeth: not excluding the history gives other numbers
    blind = brute_force(sequences, which, model, exclude_seen=False)
    assert abs(blind["hr@10"] - want["hr@10"]) > 0.02
