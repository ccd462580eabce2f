"""The lab's figures: PNGs of its measurements and ``lab.html``, in the report's visual language.

Draws only what :func:`alma_data.lab.measure.measure_lab` has computed (the ``figures`` of its
result: per seed, and the mean over seeds with its interval); it reads no run and never the
oracle, and no stage of a build imports it (``tests/test_lab.py`` checks). The paper's own
numbers stand in the captions, or as marks where they share the axis's measure.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

from alma_data.report import _accuracy_axis, _color, _err, _n_labels, _plot, _score_axis

SCALE = 10
"""The oracle's scale: every answer scores 0..10."""

# The rungs in the paper's order, their labels under the bars, and the paper's RewardBench accuracy
# (None: the paper gives no figure for that rung).
LADDER = (("ladder/base few-shot", "base few-shot\n(M0, {shots} examples)", None),
          ("ladder/fine-tuned, integer", "fine-tuned,\ninteger", 0.669),
          ("ladder/fine-tuned, real-valued", "fine-tuned,\nreal-valued", 0.846),
          ("ladder/self-distilled rounded", "self-distilled,\nrounded", 0.863),
          ("ladder/self-distilled soft", "self-distilled,\nsoft (ours)", None))


@dataclass(frozen=True)
class LabFigure:
    name: str
    """The PNG's name beside lab.md, without ``.png``."""
    title: str
    caption: str


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _steps(figures: dict, prefix: str) -> list[tuple[int, str]]:
    """(n, key) of every figure ``prefix{n}...``, by n: the rounds M1, M2, ... or the best-of-n ns."""
    out = []
    for key in figures:
        if key.startswith(prefix):
            digits = "".join(c for c in key[len(prefix):].split(" ")[0] if c.isdigit())
            if digits:
                out.append((int(digits), key))
    return sorted(out)


def _over_seeds(seeds: list, short: bool = False) -> str:
    """How the mean's interval reads, or that there is none: one seed has no spread to show."""
    if len(seeds) < 2:
        return f"seed {seeds[0]} only: no interval over seeds" if seeds else "no seeds"
    return f"mean over {len(seeds)} seeds, 95% {'' if short else 'bootstrap '}interval over seeds"


def _mean_line(ax, xs: list, cis: list, seeds: list, color: str, label: str) -> list:
    """The mean over seeds with its interval as capped error bars (none for one seed); returns the
    points' tops, where n labels go."""
    pts = [(x, *ci) for x, ci in zip(xs, cis)]
    yerr = _err(pts) if len(seeds) >= 2 else None
    ax.errorbar(xs, [p[1] for p in pts], yerr=yerr, marker="o", capsize=3, lw=2, color=color,
                label=f"{label} ({_over_seeds(seeds, short=True)})")
    return [p[3] if len(seeds) >= 2 and _finite(p[3]) else p[1] for p in pts]


def _per_seed_lines(ax, xs: list, keys: list[str], figures: dict, seeds: list, color: str, what: str) -> None:
    """Each seed's own values, thin and pale behind the mean (drawn only where there are several)."""
    if len(seeds) < 2:
        return
    for i, seed in enumerate(seeds):
        ax.plot(xs, [figures[k]["per_seed"][i] for k in keys], marker=".", lw=0.8, alpha=0.45, color=color,
                label=f"{what}, each seed" if i == 0 else None)


def _count(figures: dict, key: str) -> str | None:
    """A per-seed count (prompts, pairs) as one number when every seed agrees, else its range."""
    values = [v for v in figures.get(key, {}).get("per_seed", []) if _finite(v)]
    if not values:
        return None
    lo, hi = int(min(values)), int(max(values))
    return str(lo) if lo == hi else f"{lo}-{hi}"


def plot_rounds(path: Path, result: dict) -> LabFigure | None:
    figures, seeds = result["figures"], result["seeds"]
    steps = _steps(figures, "rounds/M")
    if not steps:
        return None
    xs, keys = [s[0] for s in steps], [s[1] for s in steps]
    prompts = _count(figures, "held-out prompts the oracle scores")

    def draw(ax):
        _per_seed_lines(ax, xs, keys, figures, seeds, _color(0), "held-out score")
        tops = _mean_line(ax, xs, [figures[k]["mean"] for k in keys], seeds, _color(0), "held-out oracle score")
        if prompts:
            _n_labels(ax, xs, tops, [prompts] * len(xs), " prompts")
        ax.set_xticks(xs, [f"M{x}" for x in xs])
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
        ax.set_xlabel("round's model (held-out seed prompts, answered greedily)")
        _score_axis(ax, SCALE, "oracle score of the answer")
        ax.legend(fontsize=8, loc="upper left")

    _plot(path, draw)
    return LabFigure(path.stem, "Figure 2 in the lab: held-out oracle score per round",
                     f"The oracle's mean score (its whole scale, 0..{SCALE}) of each round's model M_r on the "
                     f"held-out seed prompts ({prompts or '?'} a seed), {_over_seeds(seeds)}"
                     + ("; thin lines: each seed" if len(seeds) >= 2 else "")
                     + ". The paper (Figure 2, scored by ArmoRM on its own scale): 7.78 at round 1 -> 8.34 at "
                     "round 11.")


def plot_best_of_n(path: Path, result: dict) -> LabFigure | None:
    figures, seeds = result["figures"], result["seeds"]
    judge, ceiling = _steps(figures, "best_of_n/n="), dict(_steps(figures, "best_of_n_oracle/n="))
    title = "Figure 3 in the lab: best-of-n, the judge's pick and the oracle's"
    if not judge:  # the smoke run's random model writes no prompt the oracle reads: nothing to pick among
        def empty(ax):
            ax.text(0.5, 0.5, "no round-2 prompt the oracle reads:\nno best-of-n to draw at this size",
                    ha="center", va="center", transform=ax.transAxes, color="dimgrey")
            ax.set_xticks([])
            ax.set_xlabel("n (responses drawn per prompt)")
            _score_axis(ax, SCALE, "oracle score of the pick")

        _plot(path, empty)
        return LabFigure(path.stem, title, "Not measured: the round-2 pool holds no prompt the oracle reads (see "
                         "'prompts in the round-2 pool the oracle reads' below), so no response there has a true "
                         "score to pick by. The paper's curve (Figure 3) keeps rising up to N=200.")
    xs = [s[0] for s in judge]
    prompts = _count(figures, "prompts in the round-2 pool the oracle reads")

    def draw(ax):
        for i, (label, keys) in enumerate((("the judge's pick", [k for _, k in judge]),
                                           ("the oracle's own best of n (the ceiling)", [ceiling.get(x) for x in xs]))):
            if None in keys:
                continue
            _per_seed_lines(ax, xs, keys, figures, seeds, _color(i), label)
            _mean_line(ax, xs, [figures[k]["mean"] for k in keys], seeds, _color(i), label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(f"n (responses drawn per prompt, of the round-2 pool's N={max(xs)}; log scale)")
        _score_axis(ax, SCALE, "oracle score of the pick")
        ax.legend(fontsize=8, loc="upper left", title=f"n={prompts or '?'} prompts a seed", title_fontsize=8)

    _plot(path, draw)
    return LabFigure(path.stem, title,
                     f"The oracle's score (0..{SCALE}) of the response the judge scores highest among n of a prompt's "
                     f"N={max(xs)} round-2 responses drawn without replacement, and of the response the oracle itself "
                     "scores highest (the best any judge could pick); each prompt's expectation over the draws is "
                     f"exact, averaged over the round-2 prompts the oracle reads ({prompts or '?'} a seed), "
                     f"{_over_seeds(seeds)}. At n=1 both are a random response. The paper's curve (Figure 3) keeps "
                     "rising up to N=200.")


def plot_ladder(path: Path, result: dict) -> LabFigure | None:
    figures, seeds = result["figures"], result["seeds"]
    rungs = [r for r in LADDER if r[0] in figures]
    if not rungs:
        return None
    pairs = result.get("judge_test_pairs")
    shots = _count(figures, "examples the base few-shot judge is shown") or "?"
    rungs = [(key, label.format(shots=shots), paper) for key, label, paper in rungs]

    def draw(ax):
        xs = list(range(len(rungs)))
        means = [figures[key]["mean"] for key, _, _ in rungs]
        pts = [(x, *m) for x, m in zip(xs, means)]
        ax.bar(xs, [p[1] if _finite(p[1]) else 0 for p in pts], width=0.6, color=_color(0),
               yerr=_err(pts) if len(seeds) >= 2 else None, capsize=3, alpha=0.85,
               label=f"the lab's judge ({_over_seeds(seeds, short=True)})")
        for x, (key, _, _) in zip(xs, rungs):
            values = figures[key]["per_seed"]
            offsets = [0.0] if len(values) == 1 else [-0.15 + 0.3 * i / (len(values) - 1) for i in range(len(values))]
            ax.scatter([x + o for o in offsets], values, s=14, color="black", zorder=3,
                       label="each seed" if x == 0 else None)
            if not any(_finite(v) for v in values):
                ax.annotate("not measured", (x, 0.02), ha="center", fontsize=7, color="dimgrey")
        paper = [(x, p) for x, (_, _, p) in zip(xs, rungs) if p is not None]
        ax.scatter([x for x, _ in paper], [p for _, p in paper], marker="D", s=30, facecolors="none",
                   edgecolors="black", zorder=4, label="the paper (RewardBench, its own test set)")
        tops = [p[3] if len(seeds) >= 2 and _finite(p[3]) else p[1] for p in pts]
        tops = [max([t] + [v for v in figures[k]["per_seed"] if _finite(v)]) if _finite(t) else None
                for t, (k, _, _) in zip(tops, rungs)]
        if pairs:
            _n_labels(ax, xs, tops, [pairs] * len(xs), " pairs")
        _accuracy_axis(ax, "pairwise accuracy on the lab's test pairs\n(ties count half)")
        ax.set_xticks(xs, [label for _, label, _ in rungs], fontsize=8)
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)

    _plot(path, draw)
    paper = "; ".join(f"{label.replace(chr(10), ' ').replace(',', '')} {p}" for _, label, p in rungs if p is not None)
    return LabFigure(path.stem, "The judge ladder on the lab's test pairs (Table 2 in the lab)",
                     "Pairwise accuracy (ties half, so a judge that ties every pair scores 0.5; dashed: chance) on the "
                     f"lab's {pairs or '?'} test pairs, each two answers to a fresh prompt that the oracle tells apart "
                     f"by at least a point: the base model asked with {shots} annotated examples (as the build's judge "
                     "eval base few-shot stage asks it), the round-1 judge read as its integer and its real-valued "
                     "score, and the round-2 judge self-distilled with rounded and (the -soft sibling) soft targets; "
                     "bars: "
                     f"{_over_seeds(seeds)}; dots: each seed. The paper's RewardBench accuracy (hollow diamonds, "
                     f"another test set): {paper}.")


PLOTS = (("lab_rounds", plot_rounds), ("lab_best_of_n", plot_best_of_n), ("lab_ladder", plot_ladder))


def plot_figures(result: dict, out: Path) -> list[LabFigure]:
    """Every figure the lab's measurements allow, as ``out/<name>.png``."""
    out = Path(out)
    made = []
    for name, plot in PLOTS:
        fig = plot(out / f"{name}.png", result)
        if fig is not None:
            made.append(fig)
    return made


def render_html(summary: str, tables: list[tuple[str, list[str], list[list[str]]]], figures: list[LabFigure]) -> str:
    """lab.html: the summary, each figure with its caption (the PNGs beside it), then lab.md's tables."""
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>alma-data lab</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:85%}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}</style></head><body>",
             "<h1>alma-data lab: the paper's comparisons against an exact oracle</h1>", f"<p>{esc(summary)}</p>"]
    for fig in figures:
        parts += [f"<h2>{esc(fig.title)}</h2>", f"<img src='{esc(fig.name)}.png' alt='{esc(fig.title)}'>",
                  f"<p>{esc(fig.caption)}</p>"]
    for heading, columns, rows in tables:
        parts.append(f"<h2>{esc(heading.rstrip(':'))}</h2>" if heading else "<h2>The comparisons</h2>")
        parts.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
