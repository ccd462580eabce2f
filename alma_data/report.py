"""Per-round statistics and plots of a run, computed with SQL over the store.

Writes ``<run>/report/``: one PNG per figure, ``report.md`` and a self-contained
``report.html`` (images beside it, no server needed).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alma_data.sql import load_sql
from alma_data.store import Store


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    columns: list[str]
    rows: list[tuple]


def _query(con, sql: str) -> tuple[list[str], list[tuple]]:
    try:
        cur = con.execute(sql)
    except Exception:  # the run has no such table yet (e.g. only round 1 built)
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()


# One visual language for every plot: a colour per round (or per series), 95% intervals as
# error bars with caps, the items each point stands on written beside it (n=), judge scores on
# the judge's whole scale, accuracies on 0..1 with chance drawn and labelled.
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
CHANCE = dict(color="grey", lw=0.9, ls="--")


def _plot(path: Path, draw: Callable) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _err(pts: list[tuple]) -> list[list[float]]:
    """Error bars from (x, value, low, high) points; a missing bound draws none."""
    return [[p[1] - p[2] if p[2] is not None else 0 for p in pts], [p[3] - p[1] if p[3] is not None else 0 for p in pts]]


def _n_labels(ax, xs, tops, ns, what: str = "") -> None:
    """Write n=... above each point or bar (at its interval's top)."""
    for x, top, n in zip(xs, tops, ns):
        if n is not None and top is not None:
            ax.annotate(f"n={n}{what}", (x, top), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=7, color="dimgrey")


def _score_axis(ax, scale: int, label: str) -> None:
    ax.set_ylim(0, scale)
    ax.set_ylabel(f"{label} (0..{scale})")


def _accuracy_axis(ax, label: str) -> None:
    ax.axhline(0.5, label="chance (0.5)", **CHANCE)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(label)


def _by_round(rows: list[tuple]) -> dict:
    out: dict = {}
    for row in rows:
        out.setdefault(row[0], []).append(row[1:])
    return out


def _heldout_rows(con, rows: list[tuple]) -> tuple[list[str], list[tuple]]:
    """Held-out progress with its 95% bootstrap interval over the held-out prompts, per round."""
    import numpy as np

    from alma_data.intervals import bootstrap

    out = []
    for rnd, mean, prompts in rows:
        scores = np.array([r[0] for r in con.execute("select score from eval where round = ? and score is not null",
                                                     [rnd]).fetchall()], dtype=float)
        _, low, high = bootstrap(scores) if len(scores) else (mean, None, None)
        out.append((rnd, mean, low, high, prompts))
    return ["round", "mean_score", "low", "high", "prompts"], out


def build_report(store: Store) -> Path:
    out = store.local_root / "report"  # a remote run's report is made here, then copied into the run
    out.mkdir(parents=True, exist_ok=True)
    con = store.connect()
    figures: list[Figure] = []
    scale = int(store.read_run()["recipe"].get("judge", {}).get("scale", 10))

    def add(name, title, caption, sql, draw, rows_of=None):
        cols, rows = _query(con, sql)
        if not rows:
            return
        if rows_of is not None:
            cols, rows = rows_of(con, rows)
        _plot(out / f"{name}.png", lambda ax: (draw(ax, rows), ax.set_title(title, fontsize=10)))
        figures.append(Figure(name, title, caption, cols, rows))

    def hist(ax, rows):
        data = _by_round(rows)
        width = 0.8 / max(1, len(data))
        for i, (rnd, pts) in enumerate(data.items()):
            total = pts[0][2] if len(pts[0]) > 2 else None
            ax.bar([p[0] + 0.5 + (i - (len(data) - 1) / 2) * width for p in pts], [p[1] for p in pts], width=width,
                   color=_color(i), label=f"round {rnd}" + (f" (n={total} responses)" if total else ""))
        ax.set_xlabel(f"judge score (real-valued, one-point buckets, whole scale 0..{scale})")
        ax.set_ylabel("share of the round's responses")
        ax.set_xlim(0, scale + 1)
        ax.set_xticks(range(0, scale + 1))
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)

    add("score_histogram", "Judge scores per round",
        "Share of responses in each one-point score bucket, per round (n: the round's responses).",
        load_sql("report_score_histogram"), hist)

    def curve(ax, rows):
        import numpy as np

        from alma_data.intervals import bootstrap

        for i, (rnd, pts) in enumerate(_by_round(rows).items()):
            # (n, mean, low, high): the mean over prompts of each prompt's exact expectation, and
            # its 95% bootstrap interval over the prompts
            ci = [(p[0], *bootstrap(np.asarray(p[3], dtype=np.float64))) for p in pts]
            ax.errorbar([c[0] for c in ci], [c[1] for c in ci], yerr=_err(ci), marker="o", capsize=3,
                        color=_color(i), label=f"round {rnd} (n={pts[0][2]} prompts)")
        ax.set_xscale("log", base=2)
        ns = sorted({p[0] for pts in _by_round(rows).values() for p in pts})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("n (responses drawn per prompt)")
        _score_axis(ax, scale, "expected best judge score")
        ax.legend(fontsize=8)

    add("best_of_n_curve", "Best-of-n: expected best score against n",
        "The expected best score when n of a prompt's N responses are drawn (the paper's Figure 3), averaged "
        "over the round's prompts (n in the legend), with its 95% bootstrap interval over those prompts (each "
        "prompt's expectation over the draws is exact).",
        load_sql("best_of_n_curve"), curve)

    def progress(ax, rows):
        pts = [(r[0], r[1], r[2], r[3]) for r in rows]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=_err(pts), marker="o", capsize=3,
                    color=_color(0), label="mean, 95% bootstrap interval over prompts")
        _n_labels(ax, [p[0] for p in pts], [p[3] if p[3] is not None else p[1] for p in pts], [r[4] for r in rows],
                  " prompts")
        ax.set_xlabel("round (its model M_r; round 1: m1a)")
        _score_axis(ax, scale, "held-out score by the round-1 judge")
        ax.set_xticks([r[0] for r in rows])
        ax.legend(fontsize=8)

    add("heldout_progress", "Held-out score of each round's model",
        "Held-out seed prompts answered greedily by each round's model, scored by the round-1 judge (Figure 2): "
        f"the mean per round with its 95% bootstrap interval over prompts, on the judge's whole 0..{scale} scale.",
        load_sql("report_heldout_progress"), progress, rows_of=_heldout_rows)

    def per_checkpoint(ax, rows):
        data = _by_round(rows)
        names = sorted({p[0] for pts in data.values() for p in pts})
        bottom = [0] * len(data)
        rounds = list(data)
        for i, name in enumerate(names):
            vals = [dict(data[r]).get(name, 0) for r in rounds]
            ax.bar([str(r) for r in rounds], vals, bottom=bottom, label=name, color=_color(i))
            bottom = [b + v for b, v in zip(bottom, vals)]
        _n_labels(ax, [str(r) for r in rounds], bottom, bottom, " responses")
        ax.set_xlabel("round")
        ax.set_ylabel("responses")
        ax.set_ylim(0, max(bottom) * 1.15 if bottom else 1)
        ax.legend(fontsize=8)

    add("responses_per_checkpoint", "Responses per checkpoint",
        "Responses sampled in each round, by the checkpoint that wrote them (the checkpoint mix).",
        load_sql("report_responses_per_checkpoint"), per_checkpoint)

    def lengths(ax, rows):
        # shares, not counts: round 1's seeds and a feedback round's K prompts differ in number
        for i, (rnd, pts) in enumerate(_by_round(rows).items()):
            total = sum(p[1] for p in pts)
            ax.plot([p[0] for p in pts], [p[1] / total for p in pts], marker="o", color=_color(i),
                    label=f"round {rnd} (n={total} prompts)")
        ax.set_xlabel("prompt length (words, bucket of 10)")
        ax.set_ylabel("share of the round's prompts")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)

    add("prompt_lengths", "Prompt lengths per round",
        "Share of each round's prompts per length bucket (round 1: the seeds); n: the round's prompts.",
        load_sql("report_prompt_lengths"), lengths)

    def coverage(ax, rows):
        ax.bar([str(r[0]) for r in rows], [r[1] for r in rows], label="clusters", color=_color(0))
        ax.bar([str(r[0]) for r in rows], [r[2] for r in rows], label="clusters with a selected prompt", color=_color(1))
        _n_labels(ax, [str(r[0]) for r in rows], [r[1] for r in rows], [r[1] for r in rows], " clusters")
        ax.set_xlabel("round")
        ax.set_ylabel("clusters")
        ax.set_ylim(0, max(r[1] for r in rows) * 1.15)
        ax.legend(fontsize=8)

    add("cluster_coverage", "Cluster coverage",
        "k-means clusters over the unique candidates, and how many of them gave a selected prompt.",
        load_sql("report_cluster_coverage"), coverage)

    def funnel(ax, rows):
        stages = ["candidates", "parsed", "unique", "selected"]
        width = 0.8 / len(rows)
        for i, r in enumerate(rows):
            vals = [r[1], r[1] - r[2], r[1] - r[2] - r[3], r[5]]
            ax.bar([k + i * width for k in range(len(stages))], vals, width=width, label=f"round {r[0]}",
                   color=_color(i))
        ax.set_xticks([k + width * (len(rows) - 1) / 2 for k in range(len(stages))], stages)
        ax.set_ylabel("prompts")
        ax.legend(fontsize=8)

    add("dedup_funnel", "Prompt funnel: candidates -> parsed -> unique -> selected",
        "Synthetic candidates, those that parsed, those left after exact dedup, and those the rebalancing picked.",
        load_sql("prompt_funnel"), funnel)

    def ladder(ax, rows):
        sets = list(dict.fromkeys(r[0] for r in rows))
        rungs = list(dict.fromkeys(r[1] for r in rows))
        width = 0.8 / max(1, len(rungs))
        for i, rung in enumerate(rungs):
            pts = [(sets.index(r[0]), r[3], r[4], r[5], r[6]) for r in rows if r[1] == rung and r[3] is not None]
            xs = [p[0] + (i - (len(rungs) - 1) / 2) * width for p in pts]
            ax.bar(xs, [p[1] for p in pts], width=width, label=rung, yerr=_err(pts), capsize=3, color=_color(i))
            _n_labels(ax, xs, [p[3] if p[3] is not None else p[1] for p in pts], [p[4] for p in pts])
        _accuracy_axis(ax, "pairwise accuracy, ties wrong (95% interval)")
        ax.set_xticks(range(len(sets)), [f"{s} (n: pairs)" for s in sets])
        ax.legend(fontsize=7, loc="upper right")

    add("judge_quality", "Judge ladder: few-shot base, fine-tuned (integer, real-valued), self-distilled",
        "Pairwise accuracy on the held-out seed annotations and on each judge.eval_sets set (ties count as wrong, "
        "so an integer judge that ties every pair scores 0; the dashed line is chance), for each rung of the "
        "paper's ladder (its Table 2 in miniature), with 95% bootstrap intervals and the pairs each bar stands "
        "on; table judge_quality.", load_sql("report_judge_quality"), ladder)

    def set_progress(ax, rows):
        for i, eval_set in enumerate(dict.fromkeys(r[0] for r in rows)):
            pts = [(r[1], r[3], r[4], r[5], r[6]) for r in rows if r[0] == eval_set and r[3] is not None]
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=_err(pts), marker="o", capsize=3,
                        label=eval_set, color=_color(i))
            _n_labels(ax, [p[0] for p in pts], [p[3] if p[3] is not None else p[1] for p in pts], [p[4] for p in pts])
        ax.set_xticks(sorted({r[1] for r in rows}), [{0: "base", 1: "m1a"}.get(x, f"m{x}")
                                                       for x in sorted({r[1] for r in rows})])
        ax.set_xlabel("model (round)")
        _score_axis(ax, scale, "mean score by the round-1 judge (95% interval)")
        ax.legend(fontsize=8)

    add("prompt_sets", "Your prompt sets, round by round",
        "Each eval.prompt_sets set answered greedily by the base model, m1a and each round's model, scored by the "
        "round-1 judge held fixed (the paper's Figure 2), with 95% bootstrap intervals over prompts and the "
        "prompts each point stands on; table prompt_set_summary, answers in prompt_set_eval.",
        load_sql("report_prompt_sets"), set_progress)

    def user_scores(ax, rows):
        sets = list(dict.fromkeys(r[0] for r in rows))
        names = list(dict.fromkeys(r[1] for r in rows))
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            pts = [(sets.index(r[0]), r[2], r[3], r[4], r[5]) for r in rows if r[1] == name]
            xs = [p[0] + (i - (len(names) - 1) / 2) * width for p in pts]
            ax.bar(xs, [p[1] for p in pts], width=width, label=name, yerr=_err(pts), capsize=3, color=_color(i))
            _n_labels(ax, xs, [p[3] if p[3] is not None else p[1] for p in pts], [p[4] for p in pts])
        ax.set_xticks(range(len(sets)), sets)
        _score_axis(ax, scale, "mean judge score (95% interval)")
        ax.legend(fontsize=8)

    add("user_eval", "Your prompt sets: mean score per checkpoint",
        "alma-data eval: each set's prompts answered greedily by each checkpoint, scored by one judge, with 95% "
        "bootstrap intervals over prompts and the prompts each bar stands on (table user_eval_summary; the "
        "answers are in user_eval).",
        load_sql("report_user_eval"), user_scores)

    def user_wins(ax, rows):
        labels = [f"{r[0]}: {r[1]}" for r in rows]
        for i, (label, col, lo, hi) in enumerate((("win rate", 2, 7, 8), ("at equal length", 3, 9, 10))):
            pts = [(k + (i - 0.5) * 0.4, r[col] or 0, r[lo], r[hi]) for k, r in enumerate(rows)]
            ax.bar([p[0] for p in pts], [p[1] for p in pts], width=0.4, label=label, yerr=_err(pts), capsize=3,
                   color=_color(i))
            _n_labels(ax, [p[0] for p in pts], [p[3] if p[3] is not None else p[1] for p in pts], [r[11] for r in rows])
        _accuracy_axis(ax, "win rate, ties half")
        ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right")
        ax.legend(fontsize=8)

    add("user_eval_wins", "Your prompt sets: win rate of the last model, raw and at equal length",
        "Paired win rate (ties half) of the newest checkpoint against the others, and the same at equal answer "
        "length (intercept of the win indicator regressed on the length difference); length_share is the part "
        "of the score difference that length explains; the dashed line is an even split; 95% bootstrap intervals "
        "over prompts, n prompts a bar.",
        load_sql("report_user_eval_wins"), user_wins)

    _write_markdown(store, out, figures)
    _write_html(store, out, figures)
    store.upload_dir(out, "report")
    return out


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _write_whole(path: Path, text: str) -> None:
    """Through a temporary name: a report that fails half way leaves the last one whole."""
    from alma_data.outputs import atomic_file

    with atomic_file(path, "w") as f:
        f.write(text)


STAGES_TITLE = "Stages: time and each stage's own peak memory"
STAGES_CAPTION = ("Each stage as the last build that ran it recorded it in builds.jsonl: its seconds, the peak "
                  "resident memory of the build's process during that stage alone, and the summed peak of the "
                  "processes it started (a launched training), MiB.")


def stage_table(store: Store) -> tuple[list[str], list[tuple]]:
    """The report's table of stages, from ``builds.jsonl`` (empty for a run built before it)."""
    from alma_data.status import last_runs

    cols = ["round", "stage", "seconds", "peak_memory_mib", "children_peak_memory_mib"]
    rows = [(r, name, rec.get("seconds"), rec.get("peak_memory_mib"), rec.get("children_peak_memory_mib") or "")
            for (r, name), rec in last_runs(store).items()]
    return cols, sorted(rows, key=lambda row: row[0])


def _write_markdown(store: Store, out: Path, figures: list[Figure]) -> None:
    info = store.read_run()
    lines = [f"# alma-data report: run {store.run}", "",
             f"Recipe `{info['recipe'].get('name')}` (fingerprint `{info['fingerprint']}`), "
             f"model `{info['recipe'].get('model')}`.", ""]
    for f in figures:
        lines += [f"## {f.title}", "", f.caption, "", f"![{f.title}]({f.name}.png)", "",
                  "| " + " | ".join(f.columns) + " |", "|" + "---|" * len(f.columns)]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in f.rows[:40]]
        lines.append("")
    cols, rows = stage_table(store)
    if rows:
        lines += [f"## {STAGES_TITLE}", "", STAGES_CAPTION, "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        lines.append("")
    _write_whole(out / "report.md", "\n".join(lines))


def _write_html(store: Store, out: Path, figures: list[Figure]) -> None:
    info = store.read_run()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>alma-data report: {html.escape(store.run)}</title>",
             "<style>body{font-family:sans-serif;max-width:960px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}</style></head><body>",
             f"<h1>alma-data report: run {html.escape(store.run)}</h1>",
             f"<p>Recipe <code>{html.escape(str(info['recipe'].get('name')))}</code> (fingerprint "
             f"<code>{info['fingerprint']}</code>), model <code>{html.escape(str(info['recipe'].get('model')))}</code>.</p>"]
    for f in figures:
        parts += [f"<h2>{html.escape(f.title)}</h2><p>{html.escape(f.caption)}</p>",
                  f"<img src='{f.name}.png' alt='{html.escape(f.title)}'>",
                  "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in f.columns) + "</tr>"]
        parts += ["<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in f.rows[:40]]
        parts.append("</table>")
    cols, rows = stage_table(store)
    if rows:
        parts += [f"<h2>{html.escape(STAGES_TITLE)}</h2><p>{html.escape(STAGES_CAPTION)}</p>",
                  "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
        parts += ["<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    _write_whole(out / "report.html", "\n".join(parts))
