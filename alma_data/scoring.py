"""Real-valued judging: read the judge's probabilities of 0..S after ``Rating: [[``.

The score is the expectation under the renormalised probabilities (e.g. 7.31); the
integer score (argmax) is kept beside it. Integer scores tie constantly, the
expectation breaks the ties (paper: RewardBench 0.669 -> 0.846). Every stage that scores
(judgments, judge_eval, eval) reads its scores through this one function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from alma_data.engines import Engine, expected_score
from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat

if TYPE_CHECKING:
    from alma_data.stage import Context


def real_valued_score(engine: Engine, prompts: list[str], responses: list[str], scale: int = 10,
                      progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs [n, scale+1], real-valued scores, integer scores) for (prompt, response) pairs."""
    questions = [render_chat(engine.tokenizer, judge_question(p, r, scale)) + RATING_PREFIX
                 for p, r in zip(prompts, responses)]
    probs = engine.score_candidates(questions, [str(s) for s in range(scale + 1)], suffix=RATING_SUFFIX,
                                    progress=progress)
    return probs, expected_score(probs), probs.argmax(axis=-1)


def open_judge(ctx: "Context", round: int, name: str = "judge") -> Engine:
    """The engine of a judge checkpoint of the run, set to read scores."""
    return ctx.open_engine(ctx.store.checkpoint_location(round, name), name=name, round=round, role="score")
