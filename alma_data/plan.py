"""The round as one list of stages, built from the recipe: the one place a round is described.

``build`` runs this list, ``status`` shows it, and a stage's place in it is its build order.
Round 1 lands the seeds and trains m1a, the judge and the other round-1 checkpoints; a
feedback round r >= 2 writes prompts, responses, judgments and the selected data, trains
M_r (SFT of the base, or DPO from m1a), and in round 2 the judge again on its own scores.
"""

from __future__ import annotations

from alma_data.config import Recipe
from alma_data.roles import m1_names, trains_judge
from alma_data.stage import CheckpointRef, Stage
from alma_data.stages.evaluate import answers_stage, eval_stage
from alma_data.stages.judge import judge_eval_stages
from alma_data.stages.judgments import judgments_stage
from alma_data.stages.prompt_sets import prompt_set_stages
from alma_data.stages.prompts import prompt_stages
from alma_data.stages.responses import responses_stage
from alma_data.stages.seed import seed_stages
from alma_data.stages.select import selection_stages
from alma_data.stages.train import dpo_stage, judge_stage, policy_stage
from alma_data.store import TableRef


def round_stages(recipe: Recipe, r: int) -> list[Stage]:
    """Round r's stages in build order."""
    if r == 1:
        return _round1(recipe)
    stages = prompt_stages(recipe, r) + [responses_stage(recipe, r), judgments_stage(recipe, r)]
    stages += selection_stages(recipe, r)
    if recipe.train.trainer == "sft":
        # The paper's choice: M_r is SFT of the *base* model on D1 u ... u D_r.
        stages.append(policy_stage(recipe, r, f"m{r}", recipe.seed, [TableRef(k, "sft") for k in range(1, r + 1)]))
    else:
        stages.append(dpo_stage(recipe, r, f"m{r}", TableRef(r, "dpo"), start=CheckpointRef(1, m1_names(recipe)[0])))
    stages.append(answers_stage(recipe, r))
    if trains_judge(recipe, r):
        # After the first feedback round the judge learns from its own real-valued scores.
        stages.append(judge_stage(recipe, r, [TableRef(1, "judge_seed"), TableRef(r, "judge_distill")],
                                  start=CheckpointRef(1, "judge")))
        stages += judge_eval_stages(recipe, r)
    return stages + [eval_stage(recipe, r)] + prompt_set_stages(recipe, r)


def _round1(recipe: Recipe) -> list[Stage]:
    (first, *others), (seed, *other_seeds) = m1_names(recipe), recipe.train.m1_seeds
    sft = [TableRef(1, "sft")]
    # m1a's held-out answers right after it, and the judge before the other round-1
    # checkpoints: a new build shows a trained model's answers after one training, and
    # their scores after two.
    return (seed_stages(recipe)
            + [policy_stage(recipe, 1, first, seed, sft), answers_stage(recipe, 1),
               judge_stage(recipe, 1, [TableRef(1, "judge_seed")])]
            + judge_eval_stages(recipe, 1)
            + [eval_stage(recipe, 1)]
            + [policy_stage(recipe, 1, name, s, sft) for name, s in zip(others, other_seeds)]
            + prompt_set_stages(recipe, 1))


def build_plan(recipe: Recipe, target_round: int) -> list[Stage]:
    """Every stage of rounds 1..target_round, in build order."""
    return [st for r in range(1, target_round + 1) for st in round_stages(recipe, r)]


def stages_of(recipe: Recipe, r: int, *outputs: str) -> list[Stage]:
    """Round r's stages that write these tables or checkpoints, in build order (for running a
    part of a round by hand: a benchmark, a test)."""
    return [st for st in round_stages(recipe, r) if st.output in outputs]
