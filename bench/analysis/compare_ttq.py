"""Time to quality across machines: the part of the cross-hardware comparison (compare_hw.py)
that reads ``ttq`` records (`recbench ttq`, MLPerf Training's score).

Matching follows the step points' rule (the same work, the device aside) with three more
fields set aside that do not change the work to reach the target: the first run's ``seed``, the
number of ``runs`` in the score and the epoch cap ``max_epochs``. Dataset, target and target
value, framework and mode, preset, precision, batch size, evaluation interval and overrides
must be equal. With several records of one configuration on a machine (devices or runs), the
fastest ok one stands for it (``candidates`` says how many there were). A configuration that is
not ok on a machine (did not converge, error) or not run there is listed with that word, never
dropped, and has no ratio. The ratio is time to target on the machine over time to target on
the base (the first machine): < 1 means faster than the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.analysis.plotdata import Entry, config_key, group, text_grid
from bench.analysis.plots_ttq import num, target_text
from bench.point import device_kind, framework_label
from bench.results import ResultsFile

TTQ_DROP = ("device", "seed", "runs", "max_epochs")
MATCH_TEXT = ("point fields minus the device, the first run's seed, the number of runs and the "
              "epoch cap")
_SHOWN = ("dataset", "target", "target_value", "framework", "compile", "preset", "precision",
          "batch_size", "eval_every", *TTQ_DROP)


def ttq_label(point: dict[str, Any]) -> str:
    """``"synthetic-games HR@10>=0.6 torch (eager) tiny fp32 B=128 eval/1 epoch"``."""
    p = point
    words = [str(p.get("dataset")), f"{target_text(p.get('target'))}>={p.get('target_value')}",
             framework_label(p.get("framework"), p.get("compile", "eager")),
             str(p.get("preset")), str(p.get("precision"))]
    if p.get("batch_size") is not None:
        words.append(f"B={p['batch_size']}")
    if p.get("eval_every") is not None:
        words.append(f"eval/{p['eval_every']} epoch{'s' if p['eval_every'] != 1 else ''}")
    words += [f"{k}={v}" for k, v in sorted(p.items()) if k not in _SHOWN]
    return " ".join(words)


@dataclass
class TTQSide:
    """One machine's ttq record of a configuration."""

    source: str
    device: str
    status: str
    reason: str | None
    time_to_target_s: float | None  # null unless ok
    score_rule: str | None
    converged: int | None
    runs: int | None
    energy_to_target_j: float | None
    energy_provenance: str | None
    candidates: int = 1  # records of this configuration on this machine (the fastest ok used)

    @classmethod
    def of(cls, e: Entry, candidates: int = 1) -> TTQSide:
        m = e.record.metrics
        rule, prov = m.get("score_rule"), m.get("energy_provenance")
        runs = e.point.get("runs")
        return cls(e.source, e.device, e.status, e.record.reason,
                   num(m.get("time_to_target_s")) if e.ok else None,
                   rule if isinstance(rule, str) else None,
                   m["converged"] if isinstance(m.get("converged"), int) else None,
                   runs if isinstance(runs, int) else None,
                   num(m.get("energy_to_target_j")), prov if isinstance(prov, str) else None,
                   candidates)


@dataclass
class TTQRow:
    label: str
    config: dict[str, Any]  # point fields minus TTQ_DROP
    sides: list[TTQSide | None]  # per machine; None: not run there
    ratios: list[float | None] = field(default_factory=list)  # time / base time, per machine


@dataclass
class TTQTable:
    machines: list[str]  # the first is the base
    rows: list[TTQRow]


def _time(e: Entry) -> float | None:
    return num(e.record.metrics.get("time_to_target_s")) if e.ok else None


def _pick(members: list[Entry], device: str | None) -> tuple[Entry | None, int]:
    if device:
        members = [e for e in members if e.device == device or device_kind(e.device) == device]
    if not members:
        return None, 0
    timed = [e for e in members if _time(e) is not None]
    return (min(timed, key=lambda e: _time(e) or 0.0) if timed else members[0]), len(members)


def ttq_across(sides: Sequence[tuple[str, Sequence[ResultsFile]]],
               devices: Sequence[str | None] = ()) -> TTQTable | None:
    """The table over machines ``sides`` ((name, files), the first the base); None unless two
    or more of them have ttq records. ``devices``: per side, only that device or kind."""
    by_side = [group([Entry(name, f, r) for f in files for r in f.ttq],
                     lambda e: config_key(e.point, drop=TTQ_DROP)) for name, files in sides]
    if sum(1 for g in by_side if g) < 2:
        return None
    keys = list(dict.fromkeys(k for g in by_side for k in g))
    rows = []
    for key in keys:
        picked = [_pick(g.get(key, []), devices[i] if i < len(devices) else None)
                  for i, g in enumerate(by_side)]
        cells = [TTQSide.of(e, n) if e is not None else None for e, n in picked]
        if not any(cells):
            continue
        config = dict(key)
        base = cells[0].time_to_target_s if cells[0] else None
        ratios = [c.time_to_target_s / base if c and base and c.time_to_target_s is not None
                  else None for c in cells]
        rows.append(TTQRow(ttq_label(config), config, cells, ratios))
    return TTQTable([name for name, _ in sides], rows)


# --- output ---------------------------------------------------------------------------------


def secs(v: float | None) -> str:
    """``"1,234 s"``, ``"12.3 s"``; ``"-"`` for none."""
    return "-" if v is None else f"{v:,.0f} s" if abs(v) >= 100 else f"{v:.3g} s"


def time_cell(side: TTQSide | None) -> str:
    if side is None:
        return "not run"
    if side.time_to_target_s is not None:
        return secs(side.time_to_target_s) + ("*" if side.candidates > 1 else "")
    return "did not converge" if side.status == "did-not-converge" else side.status


def reached_cell(side: TTQSide | None) -> str:
    if side is None or side.converged is None:
        return "-"
    return f"{side.converged} of {side.runs}" if side.runs is not None else str(side.converged)


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}x"


def head(t: TTQTable, names: Sequence[str]) -> list[str]:
    """Column names, machines called by ``names`` (letters in text, machine ids in HTML)."""
    cols = ["work"]
    for n in names:
        cols += [f"{n} time to target", f"{n} runs reached"]
    return cols + [f"{n}/{names[0]} time" for n in names[1:]]


def cells(row: TTQRow) -> list[str]:
    out = [row.label]
    for side in row.sides:
        out += [time_cell(side), reached_cell(side)]
    return out + [_ratio(r) for r in row.ratios[1:]]


def _letters(t: TTQTable) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else f"M{i}" for i in range(len(t.machines))]


def title(t: TTQTable, names: Sequence[str] | None = None) -> str:
    names = list(names or _letters(t))
    who = ", ".join(f"{n} = {m}" + (" (base)" if i == 0 else "")
                    for i, (n, m) in enumerate(zip(names, t.machines)))
    return (f"time to quality: {who}; the same work: {MATCH_TEXT}; time to target: MLPerf's "
            f"score of each record; ratio: time over the base's (< 1: faster than the base)")


def notes(t: TTQTable) -> list[str]:
    rules = sorted({s.score_rule for r in t.rows for s in r.sides
                    if s and s.score_rule and s.time_to_target_s is not None})
    out = [f"score rule: {r}" for r in rules]
    if any(s and s.candidates > 1 for r in t.rows for s in r.sides):
        out.append("time with *: several records of that work on the machine (devices or "
                   "runs); the fastest ok one is shown")
    failed = [(r, s) for r in t.rows for s in r.sides if s and s.time_to_target_s is None]
    out += [f"{r.label} on {s.source}: {s.status}" + (f" ({s.reason})" if s.reason else "")
            for r, s in failed]
    return out


def format_ttq(t: TTQTable) -> str:
    """Plain text: the title, one row per configuration, then the notes."""
    lines = [f"cross-hardware {title(t)}"]
    lines += text_grid([head(t, _letters(t))] + [cells(r) for r in t.rows])
    return "\n".join(lines + notes(t))


def ttq_markdown(t: TTQTable) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    cols = head(t, _letters(t))
    lines = [f"**Cross-hardware {esc(title(t))}**", "",
             "| " + " | ".join(esc(c) for c in cols) + " |",
             "|" + "---|" + "---:|" * (len(cols) - 1)]
    lines += ["| " + " | ".join(esc(c) for c in cells(r)) + " |" for r in t.rows]
    extra = notes(t)
    return "\n".join(lines + ([""] + [f"- {esc(n)}" for n in extra] if extra else []))


def ttq_json(t: TTQTable) -> dict[str, Any]:
    return {"machines": t.machines, "base": t.machines[0], "match": MATCH_TEXT,
            "ratio": "time_to_target_s / the base's", "rows": [asdict(r) for r in t.rows]}
