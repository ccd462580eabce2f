"""Publishing a run as one Hub dataset: a config per split, Parquet files, and a dataset card.

The folder is built locally first (``to=DIR`` / ``--dry-run`` stop there), then pushed in
one commit with ``huggingface_hub``; the commit message carries the recipe fingerprint
and ``recipe.yaml`` travels beside the data. A publish is recorded in the run's
``publish.json`` only after the Hub has accepted the commit.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq
import yaml

from alma_data import __version__
from alma_data.errors import AlmaError
from alma_data.store import Store

SPLITS = ("sft", "dpo", "judge_distill")
RAW = ("prompts", "responses", "judgments")
DESCRIPTIONS = {
    "sft": "best-of-n: the top-scored response of every prompt (round 1: the seed pairs)",
    "dpo": "preference pairs: chosen vs rejected, scored by the judge",
    "judge_distill": "judged (prompt, response) pairs sampled for the judge's self-distillation",
    "prompts": "prompts of every round (seed and synthetic)",
    "responses": "every sampled response, with its checkpoint and seed",
    "judgments": "the judge's real-valued score, integer score and 11 probabilities per response",
}


class PublishError(AlmaError, RuntimeError):
    pass


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return label
    return "100M<n<1B"


def export(store: Store, out: Path, repo: str, *, rounds: list[int] | None = None,
           splits: list[str] | None = None, raw: bool = False, license: str = "apache-2.0",
           overwrite: bool = False) -> dict[str, Any]:
    """Write exactly the folder that would be uploaded; returns rows per config and round.

    ``out`` passes the output guard (:func:`alma_data.outputs.check_output`): never inside a
    run (the run's own ``export/`` folder excepted), never over a folder holding files unless
    ``overwrite``; the folder is written beside ``out`` and renamed into place when whole."""
    from alma_data.outputs import atomic_folder, check_output

    info = store.read_run()
    available = store.done_tables()
    wanted = list(splits or [s for s in SPLITS if s in available]) + (list(RAW) if raw else [])
    unknown = [s for s in wanted if s not in SPLITS + RAW]
    if unknown:
        raise PublishError(f"unknown split(s) {unknown}; publishable: {', '.join(SPLITS + RAW)}")
    missing = [s for s in wanted if s not in available]
    if missing:
        raise PublishError(f"run {store.run!r} has no finished {', '.join(missing)} table; build further "
                           f"(alma-data status run={store.run}) or leave it out with splits=...")
    own = store.local_root / "export"  # the default folder, the tool's own: replaced as a whole
    mine = Path(out).expanduser().absolute().is_relative_to(own)
    if mine:
        own.mkdir(parents=True, exist_ok=True)
    out = check_output(out, flag="to=", runs_dir=store.runs_dir, folder=True, overwrite=overwrite or mine,
                       allow_in=own)
    with atomic_folder(out) as tmp:
        return _fill(store, tmp, repo, info, available, wanted, rounds, license)


def _fill(store: Store, out: Path, repo: str, info: dict, available: dict, wanted: list[str],
          rounds: list[int] | None, license: str) -> dict[str, Any]:
    con = store.connect()
    counts: dict[str, dict[int, int]] = {}
    for split in wanted:
        chosen = [r for r in available[split] if rounds is None or r in rounds]
        if not chosen:
            raise PublishError(f"split {split!r} has rounds {available[split]}; none of rounds={rounds}")
        (out / split).mkdir()
        for r in chosen:
            path = out / split / f"round-{r:03d}.parquet"
            con.table(split).filter(f"round = {r}").write_parquet(str(path), compression="zstd")
            counts.setdefault(split, {})[r] = pq.read_metadata(path).num_rows
    (out / "recipe.yaml").write_text(yaml.safe_dump(info["recipe"], sort_keys=False))
    report_dir = store.local_root / "report"
    images = sorted(report_dir.glob("*.png")) if report_dir.is_dir() else []
    if images:
        (out / "images").mkdir()
        for img in images:
            shutil.copy2(img, out / "images" / img.name)
    (out / "README.md").write_text(dataset_card(store, info, repo, counts, con, [i.name for i in images], license))
    return counts


def card_metadata(counts: dict[str, dict[int, int]], license: str, pretty_name: str) -> dict[str, Any]:
    total = max((sum(c.values()) for c in counts.values()), default=0)
    configs = [{"config_name": split, "data_files": [{"split": "train", "path": f"{split}/*.parquet"}]}
               for split in counts]
    if configs:
        configs[0]["default"] = True
    return {
        "license": license,
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "alignment", "alma", "preference", "llm-judge"],
        "size_categories": [size_category(total)],
        "pretty_name": pretty_name,
        "configs": configs,
    }


def dataset_card(store: Store, info: dict, repo: str, counts: dict[str, dict[int, int]], con,
                 images: list[str], license: str) -> str:
    recipe = info["recipe"]
    meta = card_metadata(counts, license, f"alma-data run {store.run}")
    rounds = sorted({r for c in counts.values() for r in c})
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {repo}", "",
        "Synthetic alignment data made by alma-data following *ALMA: Alignment with Minimal Annotation* "
        "(Yasunaga et al., 2024): from a base model and a few hundred seed labels, each round synthesises "
        "prompts, samples many responses per prompt from several checkpoints, scores them with a "
        "real-valued LLM judge (the expectation of its 0..10 rating probabilities) and keeps the best.", "",
        "## How it was made", "",
        f"- run `{store.run}`, recipe `{recipe.get('name')}`, fingerprint `{info['fingerprint']}` "
        f"(the full recipe is `recipe.yaml` in this repository), alma-data {__version__}",
        f"- base model: `{recipe.get('model')}`; engine `{recipe.get('engine')}`",
        f"- rounds published: {', '.join(map(str, rounds))}",
        f"- per round: K={recipe['prompts']['k']} prompts, N={recipe['responses']['n']} responses a prompt, "
        f"checkpoint mix {recipe['responses']['checkpoint_mix']} (m1a : m1b : previous round's model), "
        f"pairs `{recipe['select']['pairs']}`, trainer `{recipe['train']['trainer']}`",
        "", "## Configs and rows", "",
        "| config | what it holds | " + " | ".join(f"round {r}" for r in rounds) + " | total |",
        "|---|---|" + "---|" * (len(rounds) + 1),
    ]
    for split, per in counts.items():
        lines.append(f"| `{split}` | {DESCRIPTIONS[split]} | " + " | ".join(f"{per.get(r, 0):,}" for r in rounds)
                     + f" | {sum(per.values()):,} |")
    lines += _stats_sections(con)
    if images:
        lines += ["", "## Plots", ""] + [f"![{Path(i).stem}](images/{i})" for i in images]
    lines += ["", "## Loading", "", "```python", "from datasets import load_dataset", ""]
    lines += [f'{s} = load_dataset("{repo}", "{s}", split="train")' for s in counts]
    lines += ["```", "", "Every row carries its `round`; ids (`prompt_id`, `response_id`) are stable hashes, "
              "so the configs join on them.", ""]
    return "\n".join(lines)


def _stats_sections(con) -> list[str]:
    from alma_data.sql import load_sql

    out: list[str] = []

    def table(title: str, sql: str, fmt: Callable[[Any], str] = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)):
        try:
            cur = con.execute(sql)
        except Exception:  # a table this run does not have yet: leave the section out
            return
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
        if not rows:
            return
        out.extend(["", f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)])
        out.extend("| " + " | ".join(fmt(v) for v in row) + " |" for row in rows)

    table("Judge scores per round", load_sql("card_judge_scores"))
    table("Prompts: dedup and rebalancing", load_sql("prompt_funnel"))
    table("Judge quality: the ladder on held-out annotations and the eval sets", load_sql("card_judge_quality"))
    table("Held-out score of each round's model", load_sql("card_heldout_scores"))
    return out


def _retry(what: str, fn: Callable, *args, attempts: int = 4, **kwargs):
    from huggingface_hub.errors import HfHubHTTPError

    delay = 2.0
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and status < 500 and status != 429:
                raise PublishError(f"{what} was refused by the Hub ({status}): {exc}. Check the repo name and that "
                                   "your token may write to it.") from exc
            error = exc
        except (OSError, ConnectionError, TimeoutError) as exc:
            error = exc
        except Exception as exc:  # httpx transport errors and the like
            if "Timeout" not in type(exc).__name__ and "Connect" not in type(exc).__name__:
                raise
            error = exc
        if attempt < attempts:
            time.sleep(delay)
            delay *= 2
    raise PublishError(f"{what} failed after {attempts} tries ({type(error).__name__}: {error}); nothing was "
                       "recorded as published. Check the network and run the same publish again.") from error


def push(store: Store, folder: Path, repo: str, *, private: bool = False, revision: str | None = None) -> str:
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN, or run `hf auth login`, then publish again")
    info = store.read_run()
    api = HfApi(token=token)
    _retry("creating the dataset repo", api.create_repo, repo_id=repo, repo_type="dataset", private=private,
           exist_ok=True)
    if revision:
        _retry("creating the branch", api.create_branch, repo_id=repo, branch=revision, repo_type="dataset",
               exist_ok=True)
    commit = _retry("uploading", api.upload_folder, folder_path=str(folder), repo_id=repo, repo_type="dataset",
                    revision=revision, commit_message=f"alma-data run {store.run}, recipe {info['fingerprint']}",
                    commit_description=f"Recipe fingerprint {info['fingerprint']}; alma-data {__version__}.")
    url = getattr(commit, "commit_url", str(commit))
    history = store.read_json("publish.json") or []
    history.append({"repo": repo, "revision": revision or "main", "commit": url, "fingerprint": info["fingerprint"],
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    store.write_json("publish.json", history)
    return url

