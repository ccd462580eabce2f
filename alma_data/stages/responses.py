"""Response sampling over the checkpoint mix.

N samples per prompt are split over the round's checkpoints in the recipe's ratio
(m1a : m1b : M_{r-1} = 1:1:1 from round 3; m1a : m1b in round 2), with exact counts.
Every shard is seeded from (seed, round, checkpoint, shard), so a resumed build writes
exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alma_data import schemas
from alma_data.config import Recipe
from alma_data.engines import SamplingParams
from alma_data.executors import EngineSpec, ShardJob
from alma_data.ids import response_id, seed_int
from alma_data.prompting import render_chat, stop_strings
from alma_data.roles import mix_names
from alma_data.stage import CheckpointRef, Context, Stage, recipe_keys
from alma_data.store import TableRef

# Where shards run (executor, ray.*) is left out of the hash: either executor resumes the other's shards.
RESPONSE_KEYS = recipe_keys("responses", "seed", "dtype", "engine", "store.shard_rows")


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


def checkpoint_mix(recipe: Recipe, round: int) -> list[tuple[str, CheckpointRef, int]]:
    """(checkpoint name, the checkpoint in the store, samples per prompt) for this round."""
    names = mix_names(recipe, round)
    weights = recipe.responses.checkpoint_mix
    if len(weights) < len(names):
        raise ValueError(f"responses.checkpoint_mix has {len(weights)} weights for {len(names)} checkpoints "
                         f"({', '.join(n for n, _ in names)}); give one weight each")
    counts = split_counts(recipe.responses.n, weights[: len(names)])
    return [(name, CheckpointRef(r, name), c) for (name, r), c in zip(names, counts)]


def responses_stage(recipe: Recipe, round: int) -> Stage:
    # The counts are worked out when the stage runs: a recipe with too few weights for a round
    # it does not build still has a plan that status can show.
    reads = {name: CheckpointRef(r, name) for name, r in mix_names(recipe, round)}
    return Stage("responses", round, "responses", sample_responses, inputs=(TableRef(round, "prompts"),),
                 keys=RESPONSE_KEYS, hashed={"round": round, "checkpoints": reads}, sharded=True)


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


def sample_responses(ctx: Context, stage: Stage, h: str) -> dict:
    recipe, store, round = ctx.recipe, ctx.store, stage.round
    cfg = recipe.responses
    mix = checkpoint_mix(recipe, round)
    prompts = store.read(round, "prompts", columns=["prompt_id", "prompt"]).to_pylist()
    per = recipe.store.shard_rows
    chunks = [prompts[i:i + per] for i in range(0, len(prompts), per)]
    writer = store.writer(round, "responses", config_hash=h, schema=schemas.RESPONSES, inputs=stage.inputs)
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
        ran = ctx.executor().run(sample_shard, jobs, writer, bar)
    m = writer.finish(expected_shards=len(mix) * len(chunks),
                      checkpoint_counts={name: count for name, _, count in mix},
                      checkpoints={name: store.checkpoint_location(ref.round, name) for name, ref, _ in mix},
                      run_by=ran.provenance())
    return {"rows": m["rows"], "rate": ran.rate("tokens")}
