"""The dataset registry: each dataset recbench can fetch by name, where it comes from, how it
is verified, and what the SASRec paper reached on it (recmodels/data.py fetches, caches and
loads them, and re-exports these names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_SASREC = "https://raw.githubusercontent.com/kang205/SASRec/master/data/"
# The paper: Kang & McAuley, Self-Attentive Sequential Recommendation, ICDM 2018
# (https://arxiv.org/abs/1808.09781). Table II gives the statistics, Table III the quality
# (HR@10, NDCG@10 against 100 sampled negatives, leave-one-out); its implementation details
# give the settings (maxlen 200 and dropout 0.2 for ML-1M, maxlen 50 and dropout 0.5 otherwise).
_PAPER = ("Kang & McAuley, Self-Attentive Sequential Recommendation, ICDM 2018 "
          "(statistics: Table II; HR@10 / NDCG@10 with 100 sampled negatives: Table III)")
_PAPER_QUALITY_NOTE = "HR@10 / NDCG@10, leave-one-out, 100 sampled negatives (SASRec Table III)"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: where it comes from, how to verify it, what the paper reached.

    ``sha256`` / ``size_bytes`` are the file's digest (hex) and size in bytes, or None where they
    are not known (the file was never downloaded on a machine that registered it). A download
    of such an entry is verified by its statistics instead (``check_stats``): ``users`` and
    ``items`` exactly, ``actions`` within ``actions ± actions_tolerance`` (the paper's rounding:
    "~1.0M" is 1,000,000 ± 50,000). ``paper_quality`` holds the paper's figures, keys "hr@10"
    and "ndcg@10" ({} if none); ``settings`` the GenRecConfig overrides the paper used for it
    (keys "seq_len", "dropout"; {} if none).
    """

    name: str  # registry key; also the cache file's stem
    url: str  # where fetch() downloads it from
    sha256: str | None  # hex digest of the file at url; None: not known, statistics checked
    size_bytes: int | None  # size of the file at url in bytes; None: not known
    users: int  # expected statistics after load()
    items: int
    actions: int
    format: str  # "user-item" (SASRec's "user item" lines) or "movielens" (raw ratings file)
    description: str
    citation: str
    paper_quality: dict[str, float] = field(default_factory=dict)  # "hr@10", "ndcg@10"
    settings: dict[str, Any] = field(default_factory=dict)  # "seq_len", "dropout"
    actions_tolerance: int = 0  # actions are known to ± this (the paper's rounding); 0: exact

    @property
    def actions_range(self) -> tuple[int, int]:
        """The interval (inclusive) of action counts the registered figure allows."""
        return self.actions - self.actions_tolerance, self.actions + self.actions_tolerance

    @property
    def actions_label(self) -> str:
        """The action count as the paper gives it: "287,107", or "~1.0M" where rounded."""
        if not self.actions_tolerance:
            return f"{self.actions:,}"
        return f"~{self.actions / 1e6:.1f}M" if self.actions >= 100_000 else f"~{self.actions:,}"


def _sasrec(name: str, file: str, users: int, items: int, actions_m: float, hr: float,
            ndcg: float, seq_len: int, dropout: float, what: str, source: str) -> DatasetSpec:
    """An entry for one of the SASRec repository's data/*.txt files without a known checksum:
    actions as the paper rounds them (to 0.1M, so ± 50,000)."""
    return DatasetSpec(
        name=name, url=_SASREC + file, sha256=None, size_bytes=None, users=users, items=items,
        actions=round(actions_m * 1_000_000), actions_tolerance=50_000, format="user-item",
        description=f"{what}, as preprocessed for SASRec (data/{file} of github.com/kang205/"
        f"SASRec); paper statistics {users:,} users / {items:,} items / ~{actions_m:.1f}M "
        f"actions; paper {_PAPER_QUALITY_NOTE}: {hr:.4f} / {ndcg:.4f} with maxlen {seq_len}, "
        f"dropout {dropout}",
        citation=f"{_PAPER}; {source}",
        paper_quality={"hr@10": hr, "ndcg@10": ndcg},
        settings={"seq_len": seq_len, "dropout": dropout},
    )


REGISTRY: dict[str, DatasetSpec] = {
    "games": DatasetSpec(
        name="games",
        url=_SASREC + "Video.txt",
        sha256="b7376fe24430743f411dc7f567285657b2adb3f74361cc7ba0aee94f3024b651",
        size_bytes=3_187_124,
        users=31_013,
        items=23_715,
        actions=287_107,
        format="user-item",
        description="Amazon Video Games reviews as item sequences, as preprocessed for SASRec "
        f"(data/Video.txt of github.com/kang205/SASRec); paper {_PAPER_QUALITY_NOTE}: "
        "0.7410 / 0.5360 with maxlen 50, dropout 0.5",
        citation=f"{_PAPER}; McAuley et al., Image-based Recommendations on Styles and "
        "Substitutes, SIGIR 2015",
        paper_quality={"hr@10": 0.7410, "ndcg@10": 0.5360},
        settings={"seq_len": 50, "dropout": 0.5},
    ),
    "ml-1m": _sasrec("ml-1m", "ml-1m.txt", 6_040, 3_416, 1.0, 0.8245, 0.5905, 200, 0.2,
                     "MovieLens 1M ratings as item sequences",
                     "Harper & Konstan, The MovieLens Datasets, ACM TiiS 2015"),
    "beauty": _sasrec("beauty", "Beauty.txt", 52_024, 57_289, 0.4, 0.4854, 0.3219, 50, 0.5,
                      "Amazon Beauty reviews as item sequences",
                      "McAuley et al., Image-based Recommendations on Styles and Substitutes, "
                      "SIGIR 2015"),
    "steam": _sasrec("steam", "Steam.txt", 334_730, 13_047, 3.7, 0.8729, 0.6306, 50, 0.5,
                     "Steam game reviews as item sequences",
                     "Kang & McAuley 2018 (the Steam reviews were collected for SASRec)"),
}
