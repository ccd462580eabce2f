"""Response sampling over the checkpoint mix, and judging every response.

N samples per prompt are split over the round's checkpoints in the recipe's ratio
(m1a : m1b : M_{r-1} = 1:1:1 from round 3; m1a : m1b in round 2), with exact counts.
Every shard is seeded from (seed, round, checkpoint, shard), so a resumed build writes
exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from alma_data import schemas
from alma_data.engines import SamplingParams
from alma_data.ids import response_id, seed_int
from alma_data.prompting import render_chat, stop_strings
from alma_data.stages.base import Context, config_hash
from alma_data.stages.judge import open_judge, real_valued_score
from alma_data.store import Store, TableRef


def split_counts(n: int, weights: list[int]) -> list[int]:
    """Exact integer split of n by weights (largest remainder, ties to the earlier one)."""
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"responses.checkpoint_mix {weights} must have a positive sum")
    raw = [n * w / total for w in weights]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))[: n - sum(counts)]:
        counts[i] += 1
    return counts


def checkpoint_mix(ctx: Context, round: int) -> list[tuple[str, TableRef | None, int]]:
    """(checkpoint name, its (round, name) in the store, samples per prompt) for this round."""
    from alma_data.round import m1_names

    names = [(n, 1) for n in m1_names(ctx.recipe)]
    if round >= 3:
        names.append((f"m{round - 1}", round - 1))
    weights = ctx.recipe.responses.checkpoint_mix
    if len(weights) < len(names):
        raise ValueError(f"responses.checkpoint_mix has {len(weights)} weights for {len(names)} checkpoints "
                         f"({', '.join(n for n, _ in names)}); give one weight each")
    counts = split_counts(ctx.recipe.responses.n, weights[: len(names)])
    return [(name, TableRef(r, name), c) for (name, r), c in zip(names, counts)]


def sample_responses(ctx: Context, round: int) -> None:
    recipe, store = ctx.recipe, ctx.store
    cfg = recipe.responses
    mix = checkpoint_mix(ctx, round)
    ckpt_hashes = {name: store.checkpoint_manifest_hash(ref.round, name) for name, ref, _ in mix}
    inputs = [TableRef(round, "prompts")]
    h = config_hash(recipe, "responses", "seed", "dtype", "engine", round=round, checkpoints=ckpt_hashes)
    with ctx.stage(round, "responses") as info:
        if ctx.skip_if_current(info, round, "responses", h, inputs):
            return
        prompts = store.read(round, "prompts", columns=["prompt_id", "prompt"]).to_pylist()
        per = recipe.store.shard_rows
        chunks = [prompts[i:i + per] for i in range(0, len(prompts), per)]
        writer = store.writer(round, "responses", config_hash=h, schema=schemas.RESPONSES, inputs=inputs)
        writer.expect(len(mix) * len(chunks))
        done = writer.done_shards()
        offsets = np.cumsum([0] + [c for _, _, c in mix]).tolist()
        stats = []
        total = sum(c * len(prompts) for _, _, c in mix)
        with ctx.progress(total, f"sampling responses (round {round})", "resp") as bar:
            for ci, (name, ref, count) in enumerate(mix):
                shards = [ci * len(chunks) + k for k in range(len(chunks))]
                todo = [s for s in shards if s not in done]
                bar.update(count * sum(len(chunks[s - ci * len(chunks)]) for s in shards if s in done))
                if not todo or count == 0:
                    for s in todo:
                        writer.write_shard(s, [])
                    continue
                engine = ctx.open_engine(str(store.checkpoint_dir(ref.round, name)), name=name, round=ref.round)
                tok = engine.tokenizer
                for s in todo:
                    chunk = chunks[s - ci * len(chunks)]
                    seed = seed_int(recipe.seed, round, name, s)
                    params = SamplingParams(n=count, temperature=cfg.temperature, top_p=cfg.top_p,
                                            max_new_tokens=cfg.max_new_tokens, stop=stop_strings(tok), seed=seed)
                    out = engine.generate([render_chat(tok, p["prompt"]) for p in chunk], params, progress=bar)
                    writer.write_shard(s, [
                        {"response_id": response_id(p["prompt_id"], name, offsets[ci] + j, round),
                         "prompt_id": p["prompt_id"], "checkpoint": name, "sample_index": offsets[ci] + j,
                         "seed": seed, "response": smp.text, "n_tokens": smp.n_tokens,
                         "finish_reason": smp.finish_reason}
                        for p, samples in zip(chunk, out) for j, smp in enumerate(samples)])
                stats.append(engine.stats)
                engine.close()
        m = writer.finish(expected_shards=len(mix) * len(chunks),
                          checkpoint_counts={name: count for name, _, count in mix},
                          checkpoints={name: str(store.checkpoint_dir(ref.round, name)) for name, ref, _ in mix})
        tokens = sum(s.generated_tokens for s in stats)
        seconds = sum(s.generate_seconds for s in stats)
        info.update(rows=m["rows"], rate=f"{tokens / seconds:.0f} tok/s" if seconds else "")


def current_judge(ctx: Context, round: int) -> tuple[int, str]:
    """The judge used in a round: the self-distilled one (from round 2) once it exists."""
    store = ctx.store
    for r in range(round - 1, 1, -1):
        if store.checkpoint_done(r, "judge"):
            return r, "judge"
    return 1, "judge"


def judge_responses(ctx: Context, round: int) -> None:
    recipe, store = ctx.recipe, ctx.store
    jr, jname = current_judge(ctx, round)
    inputs = [TableRef(round, "responses"), TableRef(round, "prompts")]
    h = config_hash(recipe, "judge.scale", "dtype", "engine", judge=store.checkpoint_manifest_hash(jr, jname))
    with ctx.stage(round, "judgments") as info:
        if ctx.skip_if_current(info, round, "judgments", h, inputs):
            return
        con = store.connect()
        register_round_views(con, store, round, ("prompts", "responses"))
        rows = con.execute("select r.response_id, p.prompt, r.response from responses r "
                           "join prompts p using (prompt_id) order by r.response_id").fetchall()
        per = recipe.store.shard_rows
        n_shards = max(1, -(-len(rows) // per))
        writer = store.writer(round, "judgments", config_hash=h, schema=schemas.JUDGMENTS, inputs=inputs).expect(n_shards)
        todo = [i for i in range(n_shards) if i not in writer.done_shards()]
        rate = ""
        if todo:
            engine = open_judge(ctx, jr, jname)
            label = f"round={jr}/{jname}"
            with ctx.progress(sum(len(rows[i * per:(i + 1) * per]) for i in todo), f"judging (round {round})", "pair") as bar:
                for i in todo:
                    part = rows[i * per:(i + 1) * per]
                    probs, score, score_int = real_valued_score(engine, [r[1] for r in part], [r[2] for r in part],
                                                                recipe.judge.scale, bar)
                    writer.write_shard(i, [
                        {"response_id": r[0], "score": float(s), "score_int": int(si),
                         "probs": p.astype(np.float32).tolist(), "judge": label}
                        for r, p, s, si in zip(part, probs, score, score_int)])
            rate = f"{engine.stats.scored_per_second:.2f} pairs/s"
            engine.close()
        m = writer.finish(expected_shards=n_shards, judge=f"round={jr}/{jname}")
        info.update(rows=m["rows"], rate=rate)


def register_round_views(con, store: Store, round: int,
                         tables: tuple[str, ...] = ("prompts", "responses", "judgments")) -> None:
    """Views named after the tables, over this round's shards only."""
    from alma_data.sql import register_parquet

    for table in tables:
        register_parquet(con, table, store.files(round, table))
