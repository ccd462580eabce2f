"""Any judge behind one object: a run's judge checkpoint, a local or Hub model, or the base
model as the paper's few-shot judge, scoring through the recipe's engine.

References: ``run:NAME/round=R/judge`` (or ``run:round=R/judge`` within ``run=NAME``), a
local model folder, a Hub model id, an embedded name, or ``base`` (the run's base model).
With ``shots=K`` the question is preceded by K annotated examples (seed annotations the
judge was not evaluated on) answered ``Rating: [[s]]``: the paper's few-shot judge.

Every judge reads its score the same way (real_valued_score's): the probabilities of the
answers 0..scale after ``Rating: [[``, each candidate's tokens read in full, so "10" split
into "1","0" is told apart from "1" by the closing ``]]``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from alma_data.engines import expected_score
from alma_data.errors import AlmaError
from alma_data.models import _RUN_REF, resolve
from alma_data.prompting import (PLAIN_TEMPLATE, RATING_PREFIX, RATING_SUFFIX, has_chat_template, judge_question,
                                 judge_target, render_chat)


class JudgeError(AlmaError, ValueError):
    """A judge that cannot be opened as asked; the message says what to give instead."""


@dataclass(frozen=True)
class Shot:
    prompt: str
    response: str
    score: int


def pick_shots(annotations: list[Shot], k: int, seed: int = 0) -> list[Shot]:
    """K seed annotations, seeded, spread over the score range: one per distinct score first
    (lowest, highest, then between), so the examples show the scale, not one corner of it."""
    if k <= 0 or not annotations:
        return []
    rng = random.Random(seed)
    pool = list(annotations)
    rng.shuffle(pool)
    by_score: dict[int, list[Shot]] = {}
    for a in pool:
        by_score.setdefault(a.score, []).append(a)
    order, scores = [], sorted(by_score)
    while scores:  # extremes first, then inwards
        order.append(scores.pop(0))
        if scores:
            order.append(scores.pop())
    picked: list[Shot] = []
    while len(picked) < k and any(by_score.values()):
        for s in order:
            if by_score[s] and len(picked) < k:
                picked.append(by_score[s].pop())
    rng.shuffle(picked)  # the order of the examples should not hint at the answer
    return picked


@dataclass
class Judge:
    """An open judge: ``score`` gives (probs, real-valued scores, integer scores)."""
    ref: str
    engine: object
    scale: int = 10
    shots: list[Shot] = field(default_factory=list)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def question(self, prompt: str, response: str) -> str:
        """The text the judge continues with its rating."""
        tok = self.tokenizer
        if not self.shots:
            return render_chat(tok, judge_question(prompt, response, self.scale)) + RATING_PREFIX
        if has_chat_template(tok):
            turns = []
            for s in self.shots:
                turns += [{"role": "user", "content": judge_question(s.prompt, s.response, self.scale)},
                          {"role": "assistant", "content": judge_target(s.score)}]
            turns.append({"role": "user", "content": judge_question(prompt, response, self.scale)})
            return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) + RATING_PREFIX
        head = "".join(PLAIN_TEMPLATE.format(prompt=judge_question(s.prompt, s.response, self.scale))
                       + judge_target(s.score) + "\n\n" for s in self.shots)
        return head + PLAIN_TEMPLATE.format(prompt=judge_question(prompt, response, self.scale)) + RATING_PREFIX

    def length(self, prompt: str, response: str) -> int:
        """Tokens of the judge question with its rating, the shots left out: the measure set
        against ``judge.max_length`` (the length a judge is trained on), the same for every judge,
        so every judge leaves out the same rows."""
        text = render_chat(self.tokenizer, judge_question(prompt, response, self.scale)) + judge_target(self.scale)
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def score_some(self, prompts: list[str], responses: list[str], keep: np.ndarray,
                   progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probs, real-valued scores, integer scores) of the rows ``keep`` marks; the others are
        left unscored: NaN probabilities and score, integer -1 (a question over the length a
        judge is trained on is never cut, only left out)."""
        probs = np.full((len(prompts), self.scale + 1), np.nan)
        todo = np.flatnonzero(keep)
        if len(todo):
            probs[todo] = self.score([prompts[i] for i in todo], [responses[i] for i in todo], progress)[0]
        ints = np.where(np.isnan(probs).any(axis=1), -1, np.nan_to_num(probs, nan=-1).argmax(axis=1))
        return probs, expected_score(probs), ints

    def score(self, prompts: list[str], responses: list[str], progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        questions = [self.question(p, r) for p, r in zip(prompts, responses)]
        probs = self.engine.score_candidates(questions, [str(s) for s in range(self.scale + 1)], suffix=RATING_SUFFIX,
                                             progress=progress)
        return probs, expected_score(probs), probs.argmax(axis=-1)

    def close(self) -> None:
        self.engine.close()


def seed_shots(store, recipe) -> list[Shot]:
    """Annotations few-shot examples come from: the run's seed annotations the judge is not
    evaluated on, or (no run) the recipe's seed annotations."""
    if store is not None and store.exists() and store.is_done(1, "judge_seed"):
        rows = store.read(1, "judge_seed").to_pylist()
        return [Shot(r["prompt"], r["response"], int(r["score"])) for r in rows if not r["heldout"]]
    from alma_data.seeds import load_judge

    return [Shot(j.prompt, j.response, j.score)
            for j in load_judge(recipe.seeds.judge, recipe.seeds.judge_format, recipe.judge.scale, recipe.seeds.split)]


def open_any_judge(ref: str, recipe, store=None, *, shots: int = 0, seed: int = 0) -> Judge:
    """Open the judge ``ref`` names with the recipe's engine (see the module docstring)."""
    from alma_data.engines import open_engine

    name, round_ = "judge", None
    m = _RUN_REF.match(ref)
    if ref == "base":
        path, name, round_ = resolve(recipe.model), "base", 0
    else:
        if m:
            name, round_ = m.group("name"), int(m.group("round"))
            if store is None:
                raise JudgeError(f"judge={ref} is a checkpoint of a run: say which run with run=NAME "
                                 "(and runs_dir=DIR), or write judge=run:NAME/round=R/judge")
        try:
            path = resolve(ref, store)
        except AlmaError as exc:
            raise JudgeError(f"judge={ref}: {exc}") from None
    picked = pick_shots(seed_shots(store, recipe), shots, seed) if shots else []
    if shots and len(picked) < shots:
        raise JudgeError(f"shots={shots}: only {len(picked)} seed annotations to draw examples from; lower shots")
    cache = store.local_root / "_cache" / "engine" if store is not None and store.exists() else None
    try:
        engine = open_engine(recipe, path, name=name, round=round_, role="score", cache_dir=cache)
    except (OSError, ValueError) as exc:
        if isinstance(exc, AlmaError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JudgeError(f"could not load judge {ref!r} ({path}): {first}; give a run checkpoint "
                         "(run:NAME/round=R/judge), a model folder, a Hub model id you can reach, or base") from None
    return Judge(ref, engine, recipe.judge.scale, picked)
