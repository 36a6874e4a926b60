"""The evaluation curve of a training run: a point per evaluation, best-validation selection,
early stopping (patience), a stop the first time validation reaches a target, and the best
evaluation's weights.

`recmodels.train.train` evaluates (validation, then test) every `eval_every` epochs and after
the last one and hands each evaluation to a `Curve`. The reported test metrics are those of the
best validation evaluation (SASRec's reference does the same); the earliest wins a tie.
"""

from __future__ import annotations

SELECT_METRICS = ("hr@10", "ndcg@10")  # what best-validation selection and targets may use
# the test metrics a best evaluation keeps (the classification ones: sampled protocol only)
TEST_KEYS = ("hr@10", "ndcg@10", "auc", "accuracy", "precision", "recall", "f1")


def short(m: dict) -> dict:
    """HR@10 and NDCG@10 of a metrics dict: what a curve point and the baseline show."""
    return {k: m[k] for k in ("hr@10", "ndcg@10") if k in m}


class Curve:
    """The evaluations of one run and what they decide: the best by validation `select`,
    a stop after `patience` evaluations without a better one or once validation reaches
    `target` ((metric, value)), and with `keep_best` a host copy of the best one's weights."""

    def __init__(self, select: str, *, patience: int | None = None,
                 target: tuple[str, float] | None = None, keep_best: bool = False) -> None:
        self.select, self.patience, self.target = select, patience, target
        self.keep_best = keep_best
        self.points: list[dict] = []  # the result's `curve`, one point per evaluation
        self.best: dict | None = None  # {"epoch", "valid", "test"} of the best evaluation
        self.best_state = None  # its weights (engine.state_dict()) when keep_best
        self.since_best = 0  # evaluations after the best one
        self.test_users: int | None = None  # the best evaluation's test users
        self.early_stopped: int | None = None  # the epoch patience stopped at
        self.target_epoch: int | None = None  # the epoch validation reached the target at

    def select_best(self, epoch: int, valid: dict, t: dict, engine) -> bool:
        """Whether validation `valid` (short()) beats the best so far; if so it becomes the
        best, with the test evaluation `t` (evaluate()'s dict) and, with keep_best, a copy
        of the engine's weights."""
        improved = self.best is None or valid[self.select] > self.best["valid"][self.select]
        if improved:
            self.since_best, self.test_users = 0, t["n_users"]
            self.best = {"epoch": epoch, "valid": valid,
                         "test": {k: t["model"][k] for k in TEST_KEYS if k in t["model"]}}
            if self.keep_best:
                self.best_state = engine.state_dict()  # a host copy of the weights
        else:
            self.since_best += 1
        return improved

    def add(self, epoch: int, valid: dict, t: dict, *, wall_s: float, train_s: float,
            eval_s: float) -> dict:
        """Append the evaluation's point (times so far, validation and test HR/NDCG@10)."""
        self.points.append({"epoch": epoch, "wall_s": wall_s, "train_s": train_s,
                            "eval_s": eval_s, "valid": valid, "test": short(t["model"])})
        return self.points[-1]

    def line(self, epochs: int, improved: bool) -> str:
        """The log line of the last evaluation."""
        c = self.points[-1]
        valid = c["valid"]
        return (f"eval epoch {c['epoch']}/{epochs}  valid hr@10 {valid['hr@10']:.4f} ndcg@10 "
                f"{valid['ndcg@10']:.4f} | test hr@10 {c['test']['hr@10']:.4f} ndcg@10 "
                f"{c['test']['ndcg@10']:.4f} | {c['wall_s']:.1f} s"
                + ("  (best so far)" if improved and len(self.points) > 1 else ""))

    def stop(self) -> str | None:
        """Why training stops after the last evaluation (a log line), or None: validation
        reached the target, or `patience` evaluations brought no better one."""
        epoch, valid = self.points[-1]["epoch"], self.points[-1]["valid"]
        if self.target is not None and valid[self.target[0]] >= self.target[1]:
            self.target_epoch = epoch
            return (f"target valid {self.target[0]} >= {self.target[1]:g} reached at epoch "
                    f"{epoch}: stopping")
        if self.patience is not None and self.since_best >= self.patience:
            self.early_stopped = epoch
            n = self.since_best
            return (f"early stop at epoch {epoch}: {n} evaluation{'s' if n != 1 else ''} "
                    f"without a better valid {self.select} than epoch {self.best['epoch']}'s")
        return None

    def best_line(self, popularity: dict) -> str:
        """The log line of the best evaluation, beside the popularity baseline's test HR@10."""
        best, valid, test = self.best, self.best["valid"], self.best["test"]
        return (f"best valid {self.select} at epoch {best['epoch']}: valid hr@10 "
                f"{valid['hr@10']:.4f} ndcg@10 {valid['ndcg@10']:.4f} | test hr@10 "
                f"{test['hr@10']:.4f} ndcg@10 {test['ndcg@10']:.4f} | popularity test hr@10 "
                f"{popularity['test']['hr@10']:.4f}")

    def restore_best(self, engine) -> None:
        """Put the kept best weights back into the engine unless they are its last ones (its
        optimizer state is then fresh)."""
        if self.best_state is not None and self.best["epoch"] != self.points[-1]["epoch"]:
            engine.load_state_dict(self.best_state)

    def summary(self, diverged: bool) -> dict:
        """The result's selection fields, from `select` to `target`."""
        return {
            "select": self.select,
            "best_epoch": None if diverged else self.best["epoch"],
            "selection_note": f"valid and test are those of the best validation evaluation by "
                              f"valid {self.select} (best_epoch; the earliest wins a tie)",
            "patience": self.patience,
            "early_stopped_epoch": self.early_stopped,
            "target": None if self.target is None else {
                "metric": self.target[0], "value": self.target[1],
                "reached_epoch": self.target_epoch},
        }
