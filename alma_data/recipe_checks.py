"""Every value of a recipe checked against what it must be, before anything is built.

The dataclasses in :mod:`alma_data.recipe` (read by :mod:`alma_data.config`) check types; this checks ranges and how values
agree with each other and with the round a build goes to. A value that would fail late
(a 0-row table three trainings in, a division by zero, 47 of 48 prompts held out) is
refused here with its key, what it must be and why.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from alma_data.errors import RecipeError
from alma_data import roles

if TYPE_CHECKING:
    from alma_data.recipe import Recipe

_Rule = tuple[str, Callable[[Any], bool], str]


def _min(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _between(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Callable[[Any], bool]:
    return lambda v: (v > low if open_low else v >= low) and (v < high if open_high else v <= high)


def _positive(v: Any) -> bool:
    return v > 0


def _steps(v: Any) -> bool:
    return v == -1 or v >= 1


RULES: list[_Rule] = [
    ("rounds", _min(0), "at least 0 (feedback rounds after round 1)"),
    ("seeds.max_sft", _min(0), "0 (all) or more"),
    ("seeds.max_judge", _min(0), "0 (all) or more"),
    ("seeds.judge_heldout_fraction", _between(0, 1, open_high=True), "from 0 up to (not including) 1, e.g. 0.2"),
    ("seeds.eval_prompts", _min(0), "0 or more (seed prompts held out of training)"),
    ("train.epochs", _positive, "above 0"),
    ("train.learning_rate", _positive, "above 0, e.g. 5e-5"),
    ("train.batch_size", _min(1), "at least 1"),
    ("train.gradient_accumulation", _min(1), "at least 1"),
    ("train.max_length", _min(16), "at least 16 tokens (prompt + response)"),
    ("train.max_steps", _steps, "-1 (run the epochs) or a number of steps from 1"),
    ("train.warmup_ratio", _between(0, 1, open_high=True), "from 0 up to (not including) 1"),
    ("train.dpo_beta", _positive, "above 0, e.g. 0.1"),
    ("train.save_steps", _min(0), "0 (no intermediate saves) or more"),
    ("train.num_processes", _min(1), "at least 1 (training processes)"),
    ("judge.scale", _between(1, 100), "from 1 to 100 (scores are the integers 0..scale)"),
    ("judge.epochs", _positive, "above 0"),
    ("judge.learning_rate", _positive, "above 0, e.g. 1e-4"),
    ("judge.batch_size", _min(1), "at least 1"),
    ("judge.max_length", _min(16), "at least 16 tokens"),
    ("judge.max_steps", _steps, "-1 (run the epochs) or a number of steps from 1"),
    ("judge.distill_samples", _min(0), "0 or more"),
    ("judge.batch_size_score", _min(1), "at least 1"),
    ("prompts.k", _min(1), "at least 1 (prompts selected per round)"),
    ("prompts.candidates", _min(0), "0 (4 x prompts.k) or more"),
    ("prompts.shots_min", _min(1), "at least 1 (seed prompts shown per candidate)"),
    ("prompts.shots_max", _min(1), "at least 1"),
    ("prompts.clusters", _min(0), "0 (as many as the candidates allow) or more"),
    ("prompts.near_dedup_threshold", _between(0, 1, open_low=True), "above 0 and at most 1, e.g. 0.8"),
    ("prompts.min_words", _min(0), "0 or more"),
    ("prompts.max_words", _min(1), "at least 1"),
    ("prompts.temperature", _min(0), "0 (greedy) or more"),
    ("prompts.top_p", _between(0, 1, open_low=True), "above 0 and at most 1"),
    ("prompts.max_new_tokens", _min(1), "at least 1"),
    ("responses.n", _min(1), "at least 1 (responses sampled per prompt; the paper samples 200)"),
    ("responses.temperature", _min(0), "0 (greedy) or more"),
    ("responses.top_p", _between(0, 1, open_low=True), "above 0 and at most 1"),
    ("responses.max_new_tokens", _min(1), "at least 1"),
    ("responses.batch_size", _min(0), "0 (as many as responses.kv_cache_gb holds) or more"),
    ("responses.kv_cache_gb", _positive, "above 0"),
    ("eval.max_new_tokens", _min(1), "at least 1"),
    ("eval.prompt_limit", _min(0), "0 (every prompt) or more"),
    ("judge.eval_limit", _min(0), "0 (every pair) or more"),
    ("judge.eval_shots", _min(0), "0 (no few-shot base rung) or more"),
    ("store.shard_rows", _min(1), "at least 1 (work units per shard)"),
    ("vllm.tensor_parallel_size", _min(1), "at least 1"),
    ("vllm.data_parallel_size", _min(1), "at least 1"),
    ("vllm.gpu_memory_utilization", _between(0, 1, open_low=True), "above 0 and at most 1"),
    ("vllm.max_model_len", _min(0), "0 (the model's own limit) or more"),
    ("vllm.cpu_kv_cache_gb", _positive, "above 0 (GiB of KV cache on vLLM's CPU platform)"),
    ("vllm.max_num_seqs", _min(1), "at least 1"),
    ("openai.max_concurrency", _min(1), "at least 1"),
    ("openai.timeout", _positive, "above 0 seconds"),
    ("openai.max_retries", _min(0), "0 or more"),
    ("openai.top_logprobs", _min(1), "at least 1"),
    ("ray.num_workers", _min(0), "0 (as many as the cluster allows) or more"),
    ("ray.num_cpus_per_worker", _min(0), "0 or more"),
    ("ray.num_gpus_per_worker", _min(0), "0 or more"),
    ("ray.train_cpus", _min(0), "0 or more"),
    ("ray.train_gpus", _min(0), "0 or more"),
    ("ray.train_nodes", _min(1), "at least 1"),
]
# Sane upper limits: a size above these is a typo (or needs a machine no recipe here runs on),
# refused before anything is written instead of killed by the kernel hours later.
CEILINGS: dict[str, int | float] = {
    "rounds": 100, "seeds.max_sft": 10_000_000, "seeds.max_judge": 10_000_000, "seeds.eval_prompts": 1_000_000,
    "train.epochs": 1_000, "train.batch_size": 65_536, "train.gradient_accumulation": 65_536,
    "train.max_length": 1_048_576, "train.max_steps": 100_000_000, "train.save_steps": 100_000_000,
    "train.num_processes": 4_096, "judge.epochs": 1_000, "judge.batch_size": 65_536, "judge.max_length": 1_048_576,
    "judge.max_steps": 100_000_000, "judge.distill_samples": 10_000_000, "judge.batch_size_score": 65_536,
    "prompts.k": 10_000_000, "prompts.candidates": 100_000_000, "prompts.shots_min": 1_000, "prompts.shots_max": 1_000,
    "prompts.clusters": 10_000_000, "prompts.min_words": 100_000, "prompts.max_words": 1_000_000,
    "prompts.max_new_tokens": 1_048_576, "responses.n": 10_000, "responses.max_new_tokens": 1_048_576,
    "responses.batch_size": 1_000_000, "responses.kv_cache_gb": 100_000, "eval.max_new_tokens": 1_048_576,
    "eval.prompt_limit": 100_000_000, "judge.eval_limit": 100_000_000, "judge.eval_shots": 64,
    "store.shard_rows": 100_000_000, "vllm.tensor_parallel_size": 4_096, "vllm.data_parallel_size": 4_096,
    "vllm.max_model_len": 16_777_216, "vllm.cpu_kv_cache_gb": 100_000, "vllm.max_num_seqs": 1_000_000,
    "openai.max_concurrency": 100_000, "openai.timeout": 86_400, "openai.max_retries": 1_000,
    "openai.top_logprobs": 20, "ray.num_workers": 100_000, "ray.train_nodes": 100_000,
}
UNCHECKED = ("seed",)
"""Numeric keys any value of which is fine."""


def _get(recipe: Recipe, key: str) -> Any:
    value: Any = recipe
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _refuse(key: str, value: Any, must: str) -> None:
    raise RecipeError(f"{key}={value!r} is not allowed: it must be {must}; set it with {key}=...")


def check_values(recipe: Recipe) -> None:
    """Each value in its range, and the values that must agree with each other agreeing."""
    for key, ok, must in RULES:
        value = _get(recipe, key)
        if isinstance(value, float) and not math.isfinite(value):
            _refuse(key, value, must)
        if not ok(value):
            _refuse(key, value, must)
        if key in CEILINGS and value > CEILINGS[key]:
            _refuse(key, value, f"at most {CEILINGS[key]:,} ({must})")
    p, r, t = recipe.prompts, recipe.responses, recipe.train
    if p.shots_min > p.shots_max:
        raise RecipeError(f"prompts.shots_min={p.shots_min} is above prompts.shots_max={p.shots_max}; each candidate "
                          "is written from shots_min..shots_max seed prompts: lower shots_min or raise shots_max")
    if p.min_words > p.max_words:
        raise RecipeError(f"prompts.min_words={p.min_words} is above prompts.max_words={p.max_words}: no candidate "
                          "could pass; lower min_words or raise max_words")
    if p.candidates and p.candidates < p.k:
        raise RecipeError(f"prompts.candidates={p.candidates} is below prompts.k={p.k}: a round picks one prompt per "
                          f"cluster from the candidates, so it could never pick {p.k}; raise prompts.candidates "
                          "(0 writes 4 x k)")
    if p.clusters and p.clusters < p.k:
        raise RecipeError(f"prompts.clusters={p.clusters} is below prompts.k={p.k}: one prompt is taken per cluster; "
                          "raise prompts.clusters (0: as many as the candidates allow)")
    if not t.m1_seeds:
        raise RecipeError("train.m1_seeds is empty: round 1 trains one SFT checkpoint per seed; give at least one, "
                          "e.g. train.m1_seeds=[1,2]")
    if len(set(t.m1_seeds)) != len(t.m1_seeds):
        raise RecipeError(f"train.m1_seeds={t.m1_seeds} repeats a seed: two round-1 checkpoints would be the same "
                          "model; give distinct seeds, e.g. train.m1_seeds=[1,2]")
    if len(t.m1_seeds) > 26:
        raise RecipeError(f"train.m1_seeds has {len(t.m1_seeds)} seeds; at most 26 (m1a..m1z)")
    seeds = recipe.seeds
    if seeds.max_sft and seeds.eval_prompts >= seeds.max_sft:
        raise RecipeError(f"seeds.eval_prompts={seeds.eval_prompts} holds out at least as many prompts as "
                          f"seeds.max_sft={seeds.max_sft} seed pairs bring, which leaves none to train on; lower "
                          "seeds.eval_prompts or raise seeds.max_sft")
    if t.num_processes != 1 and t.launcher == "inprocess":
        raise RecipeError(f"train.num_processes={t.num_processes} needs train.launcher=accelerate: the in-process "
                          "trainer is one process")
    ray = recipe.ray
    if ray.train_cpus <= 0 and ray.train_gpus <= 0:
        raise RecipeError("ray.train_cpus and ray.train_gpus are both 0: the training task needs a CPU or a GPU")
    if ray.train_nodes > 1 and t.num_processes % ray.train_nodes:
        raise RecipeError(f"train.num_processes={t.num_processes} does not split evenly over ray.train_nodes="
                          f"{ray.train_nodes}; make it a multiple of train_nodes")
    mix = r.checkpoint_mix
    if any(w < 0 for w in mix):
        raise RecipeError(f"responses.checkpoint_mix={mix} has a negative weight; weights are shares of "
                          "responses.n, 0 or more, e.g. [1,1,1]")
    if t.trainer == "dpo" and r.n < 2:
        raise RecipeError(f"responses.n={r.n} with train.trainer=dpo: a preference pair needs two responses to one "
                          "prompt; set responses.n=2 or more")


def mix_names(recipe: Recipe, round: int) -> list[str]:
    """The checkpoints that share round ``round``'s samples, in ``checkpoint_mix`` order."""
    return [name for name, _ in roles.mix_names(recipe, round)]


def check_model_ref(key: str, ref: str) -> None:
    """A model reference that can name a model at all (``models.classify``, nothing loaded):
    refused before a build writes anything, instead of after run.json and the seed tables."""
    from alma_data.models import ModelError, classify

    try:
        classify(ref)
    except ModelError as exc:
        message = str(exc)
        raise RecipeError(f"{key} is empty" + message[len("the model is empty"):] if message.startswith("the model is empty")
                          else f"{key}={ref}: {message}") from None


def check_model_reachable(key: str, ref: str) -> None:
    """A Hub id whose ``config.json`` can be had (from the Hub, or the local cache offline): the
    file is fetched into the cache the load reads later. Refused in one line otherwise, before
    a build writes anything (it was transformers' traceback after run.json and the seed
    tables). Other references need no network and are left to :func:`check_model_ref`."""
    import logging

    from alma_data.models import classify

    if classify(ref)[0] != "hub":
        return

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError)

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings, one a second, are not for the user
    try:
        hf_hub_download(ref, "config.json")
    except GatedRepoError:
        raise RecipeError(f"{key}={ref}: the model is gated on the Hugging Face Hub; accept its terms on its page "
                          "and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise RecipeError(f"{key}={ref}: no such model on the Hugging Face Hub (or it is private: log in with "
                          "hf auth login); check the id") from None
    except LocalEntryNotFoundError:
        raise RecipeError(f"{key}={ref}: the Hugging Face Hub could not be reached and the model is not in the local "
                          "cache; connect and run the command again, or give a local model folder or an embedded "
                          "model") from None
    except EntryNotFoundError:
        raise RecipeError(f"{key}={ref}: the Hub's {ref} has no config.json, so it is not a transformers model; "
                          "give a model's id") from None
    except (HfHubHTTPError, OSError) as exc:
        raise RecipeError(f"{key}={ref}: the Hugging Face Hub did not give the model's config.json "
                          f"({str(exc).splitlines()[0][:200]}); check the id and the connection") from None
    finally:
        hub_log.setLevel(level)


def check_for_rounds(recipe: Recipe, target_round: int) -> None:
    """What the rounds 1..``target_round`` of a build need of the recipe, checked before any of them runs."""
    check_values(recipe)
    check_model_ref("model", recipe.model)
    if target_round < 2:
        return
    mix = recipe.responses.checkpoint_mix
    m1 = len(recipe.train.m1_seeds)
    needed = m1 + 1 if target_round >= 3 else m1
    # Round 2 samples from the round-1 checkpoints only and reads the first weights; from round 3
    # the previous round's model takes the last one.
    if len(mix) != needed and not (target_round == 2 and len(mix) == m1 + 1):
        example = ",".join(["1"] * needed)
        if target_round >= 3:
            who = f"from round 3 on a round samples from {needed} checkpoints ({', '.join(mix_names(recipe, 3)[:-1])} " \
                  "and the previous round's model)"
        else:
            who = f"round 2 samples from {needed} checkpoints ({', '.join(mix_names(recipe, 2))})"
        raise RecipeError(f"responses.checkpoint_mix={mix} has {len(mix)} weight{'s' * (len(mix) != 1)}, but {who}; building to "
                          f"round={target_round} needs one weight each, e.g. responses.checkpoint_mix=[{example}]")
    for r in range(2, target_round + 1):
        weights = mix[: len(mix_names(recipe, r))]
        if sum(weights) <= 0:
            raise RecipeError(f"responses.checkpoint_mix={mix}: round {r}'s weights {weights} sum to 0, so no "
                              "checkpoint would answer; give at least one a positive weight")
