"""Response sampling over the checkpoint mix, and judging every response.

N samples per prompt are split over the round's checkpoints in the recipe's ratio
(m1a : m1b : M_{r-1} = 1:1:1 from round 3; m1a : m1b in round 2), with exact counts.
Every shard is seeded from (seed, round, checkpoint, shard), so a resumed build writes
exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alma_data import schemas
from alma_data.engines import SamplingParams
from alma_data.executors import EngineSpec, ShardJob, ShardRun, make_executor
from alma_data.ids import response_id, seed_int
from alma_data.prompting import render_chat, stop_strings
from alma_data.stages.base import Context, config_hash
from alma_data.stages.judge import real_valued_score
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


@dataclass(frozen=True)
class SampleShard:
    """One shard of sampling: ``n`` responses to each of its prompts from one checkpoint."""

    prompts: list[dict]
    """``prompt_id``, ``prompt`` of each prompt."""
    checkpoint: str
    round: int
    first_sample: int
    """Sample index of this checkpoint's first response (its offset in the checkpoint mix)."""
    n: int
    seed: int
    temperature: float
    top_p: float
    max_new_tokens: int


def sample_shard(engine, shard: SampleShard, progress=None) -> list[dict]:
    """Rows of one sampling shard; every executor runs this same function."""
    tok = engine.tokenizer
    params = SamplingParams(n=shard.n, temperature=shard.temperature, top_p=shard.top_p,
                            max_new_tokens=shard.max_new_tokens, stop=stop_strings(tok), seed=shard.seed)
    out = engine.generate([render_chat(tok, p["prompt"]) for p in shard.prompts], params, progress=progress)
    return [{"response_id": response_id(p["prompt_id"], shard.checkpoint, shard.first_sample + j, shard.round),
             "prompt_id": p["prompt_id"], "checkpoint": shard.checkpoint, "sample_index": shard.first_sample + j,
             "seed": shard.seed, "response": smp.text, "n_tokens": smp.n_tokens, "finish_reason": smp.finish_reason}
            for p, samples in zip(shard.prompts, out) for j, smp in enumerate(samples)]


def sample_responses(ctx: Context, round: int) -> None:
    recipe, store = ctx.recipe, ctx.store
    cfg = recipe.responses
    mix = checkpoint_mix(ctx, round)
    ckpt_hashes = {name: store.checkpoint_manifest_hash(ref.round, name) for name, ref, _ in mix}
    inputs = [TableRef(round, "prompts")]
    # Where shards run (executor, ray.*) is left out of the hash: either executor resumes the other's shards.
    h = config_hash(recipe, "responses", "seed", "dtype", "engine", "store.shard_rows", round=round, checkpoints=ckpt_hashes)
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
        jobs = []
        for ci, (name, ref, count) in enumerate(mix):
            shards = []
            for k, chunk in enumerate(chunks):
                s = ci * len(chunks) + k
                if s in done:
                    continue
                if count == 0:  # a checkpoint with no share of the samples: an empty shard, no engine
                    writer.write_shard(s, [])
                    continue
                shards.append((s, SampleShard(chunk, name, round, offsets[ci], count, seed_int(recipe.seed, round, name, s),
                                              cfg.temperature, cfg.top_p, cfg.max_new_tokens)))
            path = store.checkpoint_location(ref.round, name)
            jobs.append(ShardJob(EngineSpec(path, name=name, round=ref.round), shards))
        total = sum(c * len(prompts) for _, _, c in mix)
        with ctx.progress(total, f"sampling responses (round {round})", "resp") as bar:
            bar.update(total - sum(sh.n * len(sh.prompts) for job in jobs for _, sh in job.shards))
            ran = executor_for(ctx).run(sample_shard, jobs, writer, bar)
        m = writer.finish(expected_shards=len(mix) * len(chunks),
                          checkpoint_counts={name: count for name, _, count in mix},
                          checkpoints={name: store.checkpoint_location(ref.round, name) for name, ref, _ in mix},
                          run_by=ran.provenance())
        info.update(rows=m["rows"], rate=ran.rate("tokens"))


def current_judge(ctx: Context, round: int) -> tuple[int, str]:
    """The judge used in a round: the self-distilled one (from round 2) once it exists."""
    store = ctx.store
    for r in range(round - 1, 1, -1):
        if store.checkpoint_done(r, "judge"):
            return r, "judge"
    return 1, "judge"


@dataclass(frozen=True)
class JudgeShard:
    """One shard of judging: (response_id, prompt, response) triples for one judge."""

    rows: list[tuple[str, str, str]]
    scale: int
    judge: str
    """The judge's label in the rows (``round=1/judge``)."""


def judge_shard(engine, shard: JudgeShard, progress=None) -> list[dict]:
    """Rows of one judging shard: real-valued scores; every executor runs this same function."""
    probs, score, score_int = real_valued_score(engine, [r[1] for r in shard.rows], [r[2] for r in shard.rows],
                                                shard.scale, progress)
    return [{"response_id": r[0], "score": float(s), "score_int": int(si),
             "probs": p.astype(np.float32).tolist(), "judge": shard.judge}
            for r, p, s, si in zip(shard.rows, probs, score, score_int)]


def judge_responses(ctx: Context, round: int) -> None:
    recipe, store = ctx.recipe, ctx.store
    jr, jname = current_judge(ctx, round)
    inputs = [TableRef(round, "responses"), TableRef(round, "prompts")]
    h = config_hash(recipe, "judge.scale", "judge.dtype", "dtype", "engine", "store.shard_rows", judge=store.checkpoint_manifest_hash(jr, jname))
    with ctx.stage(round, "judgments") as info:
        if ctx.skip_if_current(info, round, "judgments", h, inputs):
            return
        con = store.connect(views=False)
        register_round_views(con, store, round, ("prompts", "responses"))
        rows = con.execute("select r.response_id, p.prompt, r.response from responses r "
                           "join prompts p using (prompt_id) order by r.response_id").fetchall()
        per = recipe.store.shard_rows
        n_shards = max(1, -(-len(rows) // per))
        writer = store.writer(round, "judgments", config_hash=h, schema=schemas.JUDGMENTS, inputs=inputs).expect(n_shards)
        label = f"round={jr}/{jname}"
        shards = [(i, JudgeShard(rows[i * per:(i + 1) * per], recipe.judge.scale, label))
                  for i in range(n_shards) if i not in writer.done_shards()]
        job = ShardJob(EngineSpec(store.checkpoint_location(jr, jname), name=jname, round=jr, role="score"),
                       shards)
        ran = ShardRun(executor=recipe.executor)
        if shards:
            with ctx.progress(sum(len(sh.rows) for _, sh in shards), f"judging (round {round})", "pair") as bar:
                ran = executor_for(ctx).run(judge_shard, [job], writer, bar)
        m = writer.finish(expected_shards=n_shards, judge=label, run_by=ran.provenance())
        info.update(rows=m["rows"], rate=ran.rate("pairs"))


def executor_for(ctx: Context):
    """The recipe's executor (``executor=local|ray``) for this build's shards."""
    return make_executor(ctx.recipe, ctx.store.local_root / "_cache" / "engine", ctx.log)


def register_round_views(con, store: Store, round: int,
                         tables: tuple[str, ...] = ("prompts", "responses", "judgments")) -> None:
    """Views named after the tables, over this round's shards only."""
    from alma_data.sql import register_parquet

    for table in tables:
        register_parquet(con, table, store.files(round, table))
