"""The report's time-to-quality section (``ttq`` records of `recbench ttq`): one row per record
with MLPerf's score (the time to target and the rule that made it), how many runs reached the
target, where the time went (training and evaluation shares), energy to target with its
provenance, epochs to target and the paper's quality; each run in a table of its own; and, with
ttq records from two or more machines, the time to target side by side (compare_ttq.py).

A record that did not converge shows no time. The section is absent when no file has a ttq
record, so such reports read as they did before."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.analysis.compare_ttq import cells, head, secs, ttq_across
from bench.analysis.compare_ttq import notes as ttq_notes
from bench.analysis.compare_ttq import title as ttq_title
from bench.analysis.htmlbits import Cell, esc, pct, table
from bench.analysis.plotdata import Entry, machine_summary
from bench.analysis.plots_ttq import TARGET_TEXT, num, run_list, target_text, ttq_entries
from bench.point import framework_label
from bench.results import ResultsFile

HEAD = ["machine", "device", "framework (mode)", "preset", "precision", "dataset", "target",
        "time to target", "score rule", "runs reached target", "train share", "eval share",
        "energy to target", "epochs to target", "paper quality (test)", "status"]
NUMERIC = (7, 10, 11, 12, 13)
RUN_HEAD = ["machine", "framework (mode)", "precision", "dataset", "target", "seed", "status",
            "in score", "wall s", "setup s", "train s", "eval s", "epochs", "energy J",
            "valid HR@10 reached", "valid NDCG@10 reached"]


def _n(v: Any, spec: str = ".3g") -> str:
    x = num(v)
    return "-" if x is None else format(x, spec)


def energy_text(m: Mapping[str, Any]) -> str:
    """``"1,234 J (measured-counter)"``, or ``"not measured (unavailable)"``: never without
    its provenance, so an estimate never reads as a measurement."""
    v, prov = num(m.get("energy_to_target_j")), m.get("energy_provenance")
    prov = prov if isinstance(prov, str) and prov else "no provenance recorded"
    if v is None:
        return f"not measured ({prov})"
    return (f"{v:,.0f} J" if v >= 100 else f"{v:.3g} J") + f" ({prov})"


def paper_text(m: Mapping[str, Any]) -> str:
    paper = m.get("paper_quality")
    if not isinstance(paper, Mapping):
        return "none recorded"
    parts = [f"{TARGET_TEXT[k]} {num(paper.get(k)):.4f}" for k in TARGET_TEXT
             if num(paper.get(k)) is not None]
    return ", ".join(parts) or "none recorded"


def reached_text(e: Entry) -> str:
    m, runs = e.record.metrics, run_list(e)
    n = m.get("converged")
    n = n if isinstance(n, int) else sum(1 for r in runs if r.get("status") == "converged")
    return f"{n} of {e.point.get('runs', len(runs))}"


def ttq_rows(items: Sequence[Entry]) -> list[list[Any]]:
    """One row per ttq record (see HEAD)."""
    rows = []
    for e in items:
        p, m = e.point, e.record.metrics
        t = num(m.get("time_to_target_s")) if e.ok else None
        when = (secs(t) if t is not None else "did not converge"
                if e.status == "did-not-converge" else "-")
        rule = m.get("score_rule") if t is not None else None
        status = e.status + (f": {e.record.reason}" if e.record.reason else "") + "".join(
            f"; {flag}: {why}" for flag, why in e.record.flags.items())  # e.g. unstable
        rows.append([Cell(e.source, title=machine_summary(e.file)), e.device,
                     framework_label(p.get("framework"), p.get("compile", "eager")),
                     p.get("preset"), p.get("precision"), p.get("dataset"),
                     f"{target_text(p.get('target'))} >= {p.get('target_value')}",
                     Cell(when, "" if t is not None else "flag"),
                     rule if isinstance(rule, str) else "-", reached_text(e),
                     pct(num(m.get("train_share"))), pct(num(m.get("eval_share"))),
                     Cell(energy_text(m), title=str(m.get("energy_note") or "")),
                     _n(m.get("epochs_to_target")), paper_text(m), status])
    return rows


def run_rows(items: Sequence[Entry]) -> list[list[Any]]:
    """One row per run of every ttq record; "in score": whether the record's score kept the
    run (``kept_runs``, by seed), "-" where the record does not say."""
    rows = []
    for e in items:
        p, kept = e.point, e.record.metrics.get("kept_runs")
        for r in run_list(e):
            scored = ("-" if not isinstance(kept, list) else
                      "yes" if r.get("seed") in kept else "no (dropped)" if e.ok else "no")
            reached = r.get("reached") if isinstance(r.get("reached"), Mapping) else {}
            rows.append([e.source, framework_label(p.get("framework"), p.get("compile", "eager")),
                         p.get("precision"), p.get("dataset"),
                         f"{target_text(p.get('target'))} >= {p.get('target_value')}",
                         r.get("seed"), r.get("status"), scored, _n(r.get("wall_s")),
                         _n(r.get("setup_s")), _n(r.get("train_s")), _n(r.get("eval_s")),
                         _n(r.get("epochs"), "g"), _n(r.get("energy_j")),
                         _n(reached.get("hr@10"), ".4f"), _n(reached.get("ndcg@10"), ".4f")])
    return rows


def machines(files: Sequence[ResultsFile]) -> list[tuple[str, list[ResultsFile]]]:
    """(machine id, its files) in order of first appearance: runs of one machine are one."""
    out: dict[str, list[ResultsFile]] = {}
    for f in files:
        out.setdefault(f.machine_id or "unknown-machine", []).append(f)
    return list(out.items())


def across_html(files: Sequence[ResultsFile]) -> str:
    """The cross-machine table, or "" unless two or more machines have ttq records."""
    t = ttq_across(machines(files))
    if t is None:
        return ""
    cols = head(t, t.machines)
    rows = [[r.label] + [Cell(c, "flag") if c == "did not converge" else c
                         for c in cells(r)[1:]] for r in t.rows]
    body = table(cols, rows, range(1, len(cols)))
    extra = "".join(f"<li>{esc(n)}</li>" for n in ttq_notes(t))
    return (f"<h3>Across machines</h3><p class=\"muted\">{esc(ttq_title(t, t.machines))}</p>"
            f'<div class="wide">{body}</div>' + (f"<ul>{extra}</ul>" if extra else ""))


def has_ttq(files: Sequence[ResultsFile]) -> bool:
    return any(f.ttq for f in files)


def ttq_section(files: Sequence[ResultsFile]) -> str:
    """The section's body (call only when ``has_ttq(files)``)."""
    items = ttq_entries(files)
    parts = ['<p class="muted">After MLPerf Training: several seeded runs, each training '
             "until validation reaches the target (or an epoch cap: did-not-converge). Time to "
             "target: the record's score, made by the rule in the next column (with 3 or more "
             "runs, the mean wall time without the fastest and the slowest run; a run that "
             "missed the target counts as the slowest). A run's wall time runs from its first "
             "training step to the evaluation that reached the target (compilation and "
             "evaluation included; data loading and setup apart); the train and eval shares "
             "split it, over the scored runs, as do energy and epochs to target. Energy is "
             "never shown without its provenance. Paper quality: the SASRec paper's test "
             "figures for the dataset, where it is one of the paper's.</p>",
             '<div class="wide">' + table(HEAD, ttq_rows(items), NUMERIC) + "</div>"]
    runs = run_rows(items)
    if runs:
        parts.append(f"<details><summary>{len(runs)} run(s), one row each</summary>"
                     '<div class="wide">' + table(RUN_HEAD, runs, range(8, 16)) + "</div>"
                     "</details>")
    parts.append(across_html(files))
    return "".join(parts)
