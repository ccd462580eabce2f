"""Round 1's inputs: the seed SFT pairs and judge annotations land in the store.

Writes ``round=1/prompts`` (source = seed; split = train | eval), ``round=1/sft`` (the
seed pairs, minus the held-out eval prompts) and ``round=1/judge_seed`` (annotations
with a held-out flag). Every seed row is checked before anything is written.
"""

from __future__ import annotations

from alma_data import schemas
from alma_data.ids import prompt_id, stable_id
from alma_data.seeds import SeedError, load_judge, load_sft
from alma_data.stages.base import Context, config_hash
from alma_data.store import write_table

SEED_KEYS = ("seeds", "judge.scale")


def seed_stage(ctx: Context) -> None:
    recipe, store = ctx.recipe, ctx.store
    cfg = recipe.seeds
    h = config_hash(recipe, *SEED_KEYS)
    tables = ("prompts", "sft", "judge_seed")
    with ctx.stage(1, "seeds") as info:
        if all(ctx.table_current(1, t, h, []) for t in tables):
            info.update(skipped=True, rows=sum(store.manifest(1, t)["rows"] for t in tables))
            return
        # Load and check everything first: a bad row stops here, before any write.
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

        counts = {}
        for table, rows, schema in (("prompts", list(prompts.values()), schemas.PROMPTS),
                                    ("sft", sft_rows, schemas.SFT),
                                    ("judge_seed", judge_rows, schemas.JUDGE_SEED)):
            write_table(store, 1, table, rows, config_hash=h, schema=schema,
                        sources={"sft": cfg.sft, "judge": cfg.judge})
            counts[table] = len(rows)
        info["rows"] = sum(counts.values())
        ctx.log(f"  seeds: {counts['prompts']} prompts ({cfg.eval_prompts} held out for eval), "
                f"{counts['sft']} SFT pairs, {counts['judge_seed']} judge annotations ({n_held} prompts held out)")
