"""Round 1's inputs: the seed SFT pairs and judge annotations land in the store.

Three stages, one table each: ``round=1/prompts`` (source = seed; split = train | eval),
``round=1/sft`` (the seed pairs, minus the held-out eval prompts) and ``round=1/judge_seed``
(annotations with a held-out flag). Whichever of them runs first loads and checks every
seed row of both files before anything is written, so a bad row leaves no table behind.
"""

from __future__ import annotations

from alma_data import schemas
from alma_data.config import Recipe
from alma_data.ids import prompt_id, stable_id
from alma_data.seeds import SeedError, load_judge, load_sft
from alma_data.stage import Context, Stage, recipe_keys
from alma_data.store import write_table

SEED_KEYS = recipe_keys("seeds", "judge.scale")
SCHEMAS = {"prompts": schemas.PROMPTS, "sft": schemas.SFT, "judge_seed": schemas.JUDGE_SEED}
# The first keeps the name the seed step always had in the log and in builds.jsonl.
NAMES = {"prompts": "seeds", "sft": "seed sft pairs", "judge_seed": "seed judge annotations"}


def seed_stages(recipe: Recipe) -> list[Stage]:
    return [Stage(NAMES[t], 1, t, _write_seed_table, keys=SEED_KEYS, reads_seed_files=True) for t in SCHEMAS]


def _write_seed_table(ctx: Context, stage: Stage, h: str) -> dict:
    cfg = ctx.recipe.seeds
    rows = ctx.once("seed rows", lambda: seed_rows(ctx))[stage.output]
    write_table(ctx.store, 1, stage.output, rows, config_hash=h, schema=SCHEMAS[stage.output],
                sources={"sft": cfg.sft, "judge": cfg.judge})
    return {"rows": len(rows)}


def seed_rows(ctx: Context) -> dict[str, list[dict]]:
    """The rows of the three seed tables, every seed row loaded and checked first."""
    recipe = ctx.recipe
    cfg = recipe.seeds
    sft = load_sft(cfg.sft, cfg.sft_format, cfg.split)
    judge = load_judge(cfg.judge, cfg.judge_format, recipe.judge.scale, cfg.split)
    if cfg.max_sft:
        sft = sft[: cfg.max_sft]
    if cfg.max_judge:
        judge = judge[: cfg.max_judge]

    # Held-out eval prompts: the first by hash order, so the choice is stable.
    prompts: dict[str, dict] = {}
    for s in sft:
        pid = prompt_id(s.prompt)
        prompts.setdefault(pid, {"prompt_id": pid, "prompt": s.prompt, "source": "seed",
                                 "category": s.category, "split": "train"})
    if cfg.eval_prompts >= len(prompts):
        raise SeedError(f"{cfg.sft}: the SFT seeds hold {len(prompts)} distinct prompt"
                        f"{'s' if len(prompts) != 1 else ''} and seeds.eval_prompts={cfg.eval_prompts} holds "
                        f"{cfg.eval_prompts} out for eval, which leaves none to train on; add seed pairs with "
                        f"other prompts, or set seeds.eval_prompts below {len(prompts)}")
    for pid in sorted(prompts)[: cfg.eval_prompts]:
        prompts[pid]["split"] = "eval"
    sft_rows, seen = [], set()
    for s in sft:
        pid = prompt_id(s.prompt)
        key = (pid, s.response)
        if prompts[pid]["split"] == "eval" or key in seen:
            continue
        seen.add(key)
        sft_rows.append({"prompt_id": pid, "prompt": s.prompt, "response": s.response,
                         "score": None, "source": "seed"})

    groups = sorted({j.group for j in judge}, key=lambda g: stable_id("heldout", g))
    n_held = max(1, round(len(groups) * cfg.judge_heldout_fraction)) if cfg.judge_heldout_fraction > 0 else 0
    if n_held >= len(groups):
        raise SeedError(f"{cfg.judge}: the judge annotations cover {len(groups)} prompt group"
                        f"{'s' if len(groups) != 1 else ''}, and seeds.judge_heldout_fraction="
                        f"{cfg.judge_heldout_fraction} holds out {n_held}, which leaves none to train the judge "
                        "on; add annotations of other prompts, or set seeds.judge_heldout_fraction=0")
    held = set(groups[:n_held])
    judge_rows = []
    for i, j in enumerate(judge):
        pid = prompt_id(j.prompt)
        judge_rows.append({"annotation_id": stable_id("annotation", pid, j.response, i), "prompt_id": pid,
                           "prompt": j.prompt, "response": j.response, "score": j.score,
                           "heldout": j.group in held})
    ctx.log(f"  seeds: {len(prompts)} prompts ({cfg.eval_prompts} held out for eval), "
            f"{len(sft_rows)} SFT pairs, {len(judge_rows)} judge annotations ({n_held} prompts held out)")
    return {"prompts": list(prompts.values()), "sft": sft_rows, "judge_seed": judge_rows}
