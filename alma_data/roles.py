"""Which checkpoint plays which part in a round: the names the stage list, the recipe checks
and status share, worked out from the recipe alone (never by looking at what the store holds)."""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alma_data.recipe import Recipe


def m1_names(recipe: "Recipe") -> list[str]:
    """Round 1's SFT checkpoints: m1a, m1b, ... one per seed in ``train.m1_seeds``."""
    return [f"m1{string.ascii_lowercase[i]}" for i in range(len(recipe.train.m1_seeds))]


def round_model(round: int) -> tuple[int, str]:
    """The model a round produces: m1a in round 1 (first seed), M_r after."""
    return (1, "m1a") if round == 1 else (round, f"m{round}")


def mix_names(recipe: "Recipe", round: int) -> list[tuple[str, int]]:
    """(checkpoint, its round) of the checkpoints that share round ``round``'s samples, in
    ``responses.checkpoint_mix`` order: m1a, m1b, and from round 3 the previous round's model."""
    return [(n, 1) for n in m1_names(recipe)] + ([(f"m{round - 1}", round - 1)] if round >= 3 else [])


def trains_judge(recipe: "Recipe", round: int) -> bool:
    """Round 1 trains the judge on the seeds; round 2 trains it further on its own scores
    (self-distillation) when the recipe asks for it; no other round trains one."""
    return round == 1 or (round == 2 and recipe.judge.self_distill)


def judge_of_round(recipe: "Recipe", round: int) -> tuple[int, str]:
    """The judge that scores round ``round``'s responses: the self-distilled one of round 2
    from round 3 on, when there is one; the round-1 judge before."""
    return (2, "judge") if round >= 3 and trains_judge(recipe, 2) else (1, "judge")
