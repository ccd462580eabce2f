"""The lab: its domain and oracle, its seeds, the oracle's isolation from every build, and a
smoke run of ``alma-data lab`` (the tiny random model, a handful of rows, two seeds)."""

from __future__ import annotations

import ast
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from alma_data.lab import domain, oracle
from alma_data.store import Store

ROOT = Path(__file__).resolve().parents[1]


def test_every_generated_prompt_parses_and_its_correct_answer_scores_10():
    rng = random.Random(3)
    for _ in range(500):
        ex = domain.random_example(rng)
        assert oracle.parse(ex.prompt) == ex.spec, ex.prompt
        assert oracle.score(ex.spec, domain.correct_answer(ex.spec, rng)) == 10.0, ex.prompt


def test_oracle_scores_each_fault_below_the_correct_answer():
    spec = oracle.parse("List three colors. Answer in uppercase. Finish with the word done.")
    assert spec == domain.Spec("list", n=3, category="colors", case="upper", end="done")
    assert oracle.score(spec, "RED, BLUE, GREEN, DONE") == 10.0
    for bad in ("red, blue, green, done", "RED, BLUE, DONE", "RED, BLUE, GREEN", "RED, BLUE, CAT, DONE",
                "Sure! RED, BLUE, GREEN, DONE", ""):
        assert oracle.score(spec, bad) < 10.0, bad
    assert oracle.score(spec, "") == 0.0
    add = oracle.parse("What is 12 plus 30?")
    assert [oracle.score(add, a) for a in ("42", "The answer is 42", "41", "7")] == [10.0, 6.0, 3.0, 0.0]
    assert oracle.parse("Tell me a story about 12 dragons.") is None
    assert oracle.parse("Say moon 3 times. Answer in uppercase. Answer in lowercase.") is None


def test_the_task_is_judged_on_the_items_whatever_separator_and_the_separator_by_its_modifier():
    """The rubric's rule (lab-judge-00026-4 of the 400 annotations bundled before 3 Dec): the task weighs 6 and each modifier 1.5, and the
    items are read at any separator, so a wrong separator costs its 1.5 and nothing more."""
    sort = oracle.parse("Put these numbers in decreasing order: 22 27 21 4 6. Use commas between the items.")
    assert sort == domain.Spec("sort", numbers=(22, 27, 21, 4, 6), descending=True, sep="comma")
    assert oracle.score(sort, "27, 22, 21, 6, 4") == 10.0
    for other_separator in ("27\n22\n21\n6\n4", "27 22 21 6 4", "27,\n22,\n21,\n6,\n4", "27, 22\n21, 6, 4"):
        assert oracle.score(sort, other_separator) == 8.0, other_separator  # 10 * 6 / 7.5
    # Its neighbours: a wrong item order or a dropped item costs the same under either separator.
    for faulty in ("27, 22, 6, 21, 4", "27, 22, 21, 6"):
        assert oracle.score(sort, faulty.replace(", ", "\n")) == oracle.score(sort, faulty) - 2.0, faulty
    lines = oracle.parse("Name three colors. Write one per line.")
    assert oracle.score(lines, "red\nblue\ngreen") == 10.0
    assert oracle.score(lines, "red, blue, green") == oracle.score(lines, "red blue green") == 8.0
    both = oracle.parse("Say moon three times. Answer in uppercase. Separate them with commas.")
    assert oracle.score(both, "MOON, MOON, MOON") == 10.0
    assert oracle.score(both, "MOON\nMOON\nMOON") == round(10 * 7.5 / 9, 2)  # separator 0, case 1.5, task 6
    assert oracle.score(both, "moon\nmoon\nmoon") == round(10 * 6 / 9, 2)
    # The bundled annotations of that kind (the task met, the separator not, every other
    # modifier met) lose the separator's 1.5 and nothing more.
    rows = [json.loads(l) for l in (ROOT / "data" / "seed" / "lab_judge.jsonl").read_text().splitlines()]
    wrong_sep = []
    for r in rows:
        parts = {name: (w, c) for name, w, c in oracle.checks(oracle.parse(r["prompt"]), r["response"])}
        if parts.get("sep", (0, 1))[1] == 0 and all(c == 1 for name, (w, c) in parts.items() if name != "sep"):
            total = sum(w for w, _ in parts.values())
            wrong_sep.append(r["score"] == round(10 * (total - 1.5) / total))
    assert len(wrong_sep) >= 5 and all(wrong_sep)


def test_bundled_lab_seeds_are_what_the_generator_writes():
    from alma_data.lab.seeds import BUNDLED_JUDGE, BUNDLED_SFT, seed_rows

    sft, judge = seed_rows(BUNDLED_SFT, n_judge=BUNDLED_JUDGE)
    lines = lambda name: [json.loads(l) for l in (ROOT / "data" / "seed" / f"{name}.jsonl").read_text().splitlines()]
    assert lines("lab_sft") == sft and lines("lab_judge") == judge
    assert (len(sft), len(judge)) == (BUNDLED_SFT, BUNDLED_JUDGE)
    assert seed_rows(40)[0] == seed_rows(40, n_judge=7)[0] and len(seed_rows(40)[1]) == 32  # default 5 : 4
    assert {r["score"] for r in judge} >= {0, 10} and len({r["score"] for r in judge}) >= 8
    for r in judge:  # the annotator's score is the oracle's, rounded
        assert r["score"] == round(oracle.score_prompt(r["prompt"], r["response"]))


# -- the oracle only measures ----------------------------------------------------------------
MEASURING = {"alma_data/lab/oracle.py", "alma_data/lab/measure.py", "alma_data/lab/seeds.py"}
"""The modules allowed to import the oracle: itself, the measurements, and the seed writer
(where it plays the human annotator, before any build)."""


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_oracle_is_never_read_by_a_build():
    """No module of the library or the trainer but the measuring ones imports the oracle or
    the measurements, nor the lab's figures (which draw the measurements and import neither);
    the runner imports them only after its builds. At run time the smoke run below builds
    with the oracle sealed."""
    sources = sorted((ROOT / "alma_data").rglob("*.py")) + sorted((ROOT / "training").rglob("*.py"))
    lab_only = ("alma_data.lab.oracle", "alma_data.lab.measure", "alma_data.lab.figures")
    offenders = []
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        if rel in MEASURING:
            continue
        hits = {n for n in _imports(path) if n.startswith(lab_only)}
        if rel == "alma_data/lab/runner.py":
            # allowed only inside run_lab, after build_all
            text = path.read_text()
            for module in ("measure", "figures"):
                assert text.index(f"from alma_data.lab.{module} import") > text.index("build_seconds = build_all(")
            continue
        if hits or re.search(r"from alma_data\.lab import .*\b(oracle|measure|figures)\b", path.read_text()):
            offenders.append(rel)
    assert offenders == []


def test_measure_figures_on_a_pool():
    from alma_data.lab.measure import best_of_n_curve, best_of_n_ns, mix_vs_latest, pick_oracle, pool_pair_outcomes

    pool = {"p": [{"response_id": f"r{i}", "checkpoint": ck, "score": s, "score_int": round(s), "oracle": o}
                  for i, (ck, s, o) in enumerate([("m1a", 2.2, 1.0), ("m1b", 2.4, 3.0), ("m2", 8.9, 9.0),
                                                  ("m2", 7.1, 4.0), ("m1a", 1.0, 0.0), ("m2", 6.6, 8.0)])]}
    assert pick_oracle(pool, "score").tolist() == [9.0]
    curve = best_of_n_curve(pool, [1, 2, 6])
    assert curve[1][0] == pytest.approx(np.mean([1, 3, 9, 4, 0, 8]))
    assert curve[1][0] < curve[2][0] < curve[6][0] == 9.0
    assert best_of_n_ns(6) == [1, 2, 4, 6] and best_of_n_ns(8) == [1, 2, 4, 8] and best_of_n_ns(0) == []
    oracle_scores = [1, 3, 9, 4, 0, 8]
    ceiling = best_of_n_curve(pool, best_of_n_ns(6), rank="oracle")  # the oracle's own best of n
    assert ceiling[1][0] == pytest.approx(curve[1][0]) and ceiling[6][0] == 9.0
    assert ceiling[2][0] == pytest.approx(np.mean([max(a, b) for i, a in enumerate(oracle_scores)
                                                   for b in oracle_scores[i + 1:]]))
    assert all(ceiling[n][0] >= best_of_n_curve(pool, [n])[n][0] for n in best_of_n_ns(6))
    only, mixed = mix_vs_latest(pool, "m2", draws=50)
    assert 0 <= mixed[0] <= 9 and only[0] == 9.0  # all three of m2's: its best is always drawn
    outcomes = pool_pair_outcomes(pool, "score_int")
    assert set(outcomes.tolist()) <= {0.0, 0.5, 1.0} and len(outcomes) > 0


# -- the smoke run ---------------------------------------------------------------------------
def test_lab_smoke_run(tmp_path, monkeypatch):
    """``run_lab`` at size=smoke: one seed to round 2, every sibling built from its parent's copy with the
    shared stages already done, the oracle sealed while anything builds, then the table."""
    from alma_data.lab import runner

    sealed = {"on": False}
    real_parse = oracle.parse

    def guarded(prompt):
        assert not sealed["on"], "a build read the oracle"
        return real_parse(prompt)

    real_score = oracle.score

    def guarded_score(spec, answer):
        assert not sealed["on"], "a build read the oracle"
        return real_score(spec, answer)

    monkeypatch.setattr(oracle, "parse", guarded)
    monkeypatch.setattr(oracle, "score", guarded_score)
    real_build_all = runner.build_all

    def build_all_sealed(*args, **kwargs):
        sealed["on"] = True
        try:
            return real_build_all(*args, **kwargs)
        finally:
            sealed["on"] = False

    monkeypatch.setattr(runner, "build_all", build_all_sealed)
    logs: list[str] = []
    result = runner.run_lab(tmp_path, "smoke", log=logs.append)
    for seed in runner.SIZES["smoke"].seeds:
        for sib in runner.SIBLINGS:
            line = next(l for l in logs if l.startswith(f"lab: lab-s{seed}-{sib.name} built"))
            shared = int(re.search(r"(\d+) shared with", line).group(1))
            assert shared >= 5, line  # the copied rounds were reused, not rebuilt
    table = (tmp_path / "lab.md").read_text()
    for section in ("integer -> real-valued", "off -> rounded", "random -> diversified", "latest only -> 1:1:1",
                    "DPO -> SFT", "Rounds 1..R", "interval"):
        assert section in table
    figures = result["figures"]
    assert all(np.isfinite(figures[f"rounds/M{r} held-out"]["mean"][0]) for r in (1, 2))
    assert len(figures["rounds/M1 held-out"]["per_seed"]) == len(runner.SIZES["smoke"].seeds)
    assert {c["verdict"] for c in result["comparisons"]} <= {"held", "did not hold", "could not be told apart",
                                                             "could not be measured", "not run at this size"}
    saved = json.loads((tmp_path / "lab.json").read_text())
    assert saved["size"] == "smoke"
    # lab.html and lab.md show each figure, drawn beside them as a PNG
    page = (tmp_path / "lab.html").read_text()
    for name, title in (("lab_rounds", "Figure 2 in the lab"), ("lab_best_of_n", "Figure 3 in the lab"),
                        ("lab_ladder", "The judge ladder")):
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, name
        assert f"<img src='{name}.png'" in page and title in page and f"]({name}.png)" in table, name
    assert "<table>" in page and "integer -&gt; real-valued" in page and "ladder/base few-shot" in page
    # the judge ladder: the base few-shot rung measured, the others the figures measured once
    figures = saved["figures"]
    assert all(0 <= v <= 1 for v in figures["ladder/base few-shot"]["per_seed"])
    for rung, key in (("fine-tuned, integer", "int_vs_real/judge test, integer"),
                      ("fine-tuned, real-valued", "int_vs_real/judge test, real-valued"),
                      ("self-distilled rounded", "distill/judge test, rounded"),
                      ("self-distilled soft", "distill/judge test, soft")):
        assert figures[f"ladder/{rung}"]["per_seed"] == figures[key]["per_seed"]
    # best-of-n: n = 1, 2, 4, ... N, the judge's pick never above the oracle's own best of n
    ns = sorted(int(k.split("=")[1]) for k in figures if k.startswith("best_of_n/n="))
    assert ns == sorted(int(k.split("=")[1]) for k in figures if k.startswith("best_of_n_oracle/n="))
    if any(figures["prompts in the round-2 pool the oracle reads"]["per_seed"]):
        responses = Store(tmp_path, "lab-s0").read(2, "responses", columns=["prompt_id"]).column("prompt_id")
        assert ns[0] == 1 and ns[-1] == max(Counter(responses.to_pylist()).values())
        for n in ns:
            judge, ceiling = figures[f"best_of_n/n={n}"]["per_seed"], figures[f"best_of_n_oracle/n={n}"]["per_seed"]
            assert all(pick <= best + 1e-9 for pick, best in zip(judge, ceiling)), n
    else:  # the random model wrote no prompt the oracle reads: nothing to pick among, and the page says so
        assert ns == [] and "no prompt the oracle reads" in page


def test_lab_command_takes_its_seeds_as_a_key(tmp_path):
    """``alma-data lab seeds=A,B,C`` reruns the lab on other seeds (here one, at the smoke size);
    seeds that are not integers get one line and a non-zero exit."""
    from conftest import run_cli

    bad = run_cli("lab", "size=smoke", "seeds=1,x", f"runs_dir={tmp_path}", check=False)
    assert bad.returncode != 0 and "seeds must be integers" in bad.stderr and "Traceback" not in bad.stderr
    run_cli("lab", "size=smoke", "seeds=7", f"runs_dir={tmp_path}")
    result = json.loads((tmp_path / "lab.json").read_text())
    assert result["seeds"] == [7] and (tmp_path / "lab-s7").is_dir() and not (tmp_path / "lab-s0").exists()
    assert len(result["figures"]["rounds/M1 held-out"]["per_seed"]) == 1


def test_each_lab_model_has_its_own_cache_folder_and_a_stale_one_is_refused(tmp_path, monkeypatch):
    """The model cache knows a model by name only: every lab size is its own embedded name,
    and a cached folder made with another version or shape is refused before a build."""
    from dataclasses import asdict

    from alma_data.errors import AlmaError
    from alma_data.lab.base_model import MODELS, VERSION
    from alma_data.lab.runner import check_base_model
    from alma_data.models import EMBEDDED, cache_dir

    monkeypatch.setenv("ALMA_DATA_CACHE", str(tmp_path))
    assert set(MODELS) <= set(EMBEDDED) and len({tuple(asdict(s).items()) for s in MODELS.values()}) == len(MODELS)
    for name, shape in MODELS.items():  # folders as the builder leaves them (no pretraining here)
        folder = cache_dir() / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "lab_base.json").write_text(json.dumps({"version": VERSION, "name": name, "shape": asdict(shape)}))
        check_base_model(name)
    small = cache_dir() / "lab-small" / "lab_base.json"
    small.write_text(json.dumps({"version": VERSION, "shape": asdict(MODELS["lab-tiny"])}))
    with pytest.raises(AlmaError, match="remove that folder"):
        check_base_model("lab-small")
    tiny = cache_dir() / "lab-tiny" / "lab_base.json"
    tiny.write_text(json.dumps({"version": VERSION}))  # lab-tiny as version 2 wrote it: no shape, still current
    check_base_model("lab-tiny")
    tiny.write_text(json.dumps({"version": VERSION - 1}))
    with pytest.raises(AlmaError, match="remove that folder"):
        check_base_model("lab-tiny")
