"""Each stage's own peak memory, and a warning before a stage that would not fit.

A process's ``ru_maxrss`` only grows, so a build's later stages would all report the peak of
the largest one. :class:`StagePeak` measures one stage at a time:

- this process: on Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's
  high-water mark of the resident set (``VmHWM`` in ``/proc/self/status``) to what is resident
  now, and ``VmHWM`` read at the stage's end is the stage's own peak, however short it was.
  Where that fails (another kernel, another OS) a thread samples the resident set every
  :data:`SAMPLE_SECONDS` instead, which can miss a peak shorter than that;
- the processes the stage starts (``train.launcher=accelerate`` and its trainers): a thread
  sums their resident sets every :data:`SAMPLE_SECONDS`, and those that ended and were
  waited for raise ``RUSAGE_CHILDREN``'s ``ru_maxrss`` (their largest single one).

Before a stage starts and after it ends, :func:`release` gives back what the last one freed
(a garbage collection, then glibc's ``malloc_trim(0)`` where there is glibc), so that the next
stage's peak starts from what the build really holds.

:func:`training_estimate` is the one line a training stage prints before it starts when it
would not fit in the memory available (:func:`available_mib`; ``ALMA_DATA_AVAILABLE_MIB``
overrides it, to check the line or to plan for a smaller machine).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import resource
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_SECONDS = 0.2
MIB = 1024 * 1024
AVAILABLE_ENV = "ALMA_DATA_AVAILABLE_MIB"
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


_libc: Any = None


def release() -> None:
    """Free what nothing holds any more: Python's cycles, then glibc's free lists and the top
    of its heaps given back to the system (``malloc_trim``), where there is glibc."""
    gc.collect()
    trim_heap()


def trim_heap() -> bool:
    """glibc's ``malloc_trim(0)``: the free memory inside its heaps, not only at their top, given
    back to the system (tens of milliseconds; no garbage collection). False where there is no glibc."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
    return bool(_libc)


def reset_high_water_mark() -> bool:
    """Reset this process's VmHWM to its resident set now; False where the kernel does not let it."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    # reset means the mark is about what is resident now (it may have grown a little since)
    return hwm is not None and rss is not None and hwm <= rss + 4096


class StagePeak:
    """The peak resident memory of one stage: this process's, and its child processes' (summed
    over those alive at once). ``start()`` before the stage, ``stop()`` after it."""

    def __init__(self, sample_self: bool | None = None):
        self._force_sampling = bool(sample_self)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._self_max = 0.0
        self._children_max = 0.0

    def start(self) -> "StagePeak":
        import psutil

        release()
        self._proc = psutil.Process()
        self.start_mib = rss_mib()
        self.method = "VmHWM" if not self._force_sampling and reset_high_water_mark() else "sampled"
        self._self_max = self.start_mib
        self._children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        self._thread = threading.Thread(target=self._sample, name="alma-stage-peak", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        while True:
            if self.method == "sampled":
                try:
                    self._self_max = max(self._self_max, self._proc.memory_info().rss / MIB)
                except psutil.Error:
                    pass
            total = 0
            try:
                for child in self._proc.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self._children_max = max(self._children_max, total / MIB)
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def stop(self) -> dict[str, Any]:
        """``peak_memory_mib`` (this process during the stage), ``start_memory_mib``, how the
        peak was read, and ``children_peak_memory_mib`` where the stage started processes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.method == "VmHWM":
            hwm = _status_kib("VmHWM")
            peak = hwm / 1024 if hwm is not None else self._self_max
        else:
            peak = max(self._self_max, rss_mib())
        out: dict[str, Any] = {"peak_memory_mib": round(peak), "start_memory_mib": round(self.start_mib),
                               "peak_from": self.method}
        waited = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        children = max(self._children_max, waited if waited > self._children_before else 0.0)
        if children > 0:
            out["children_peak_memory_mib"] = round(children)
        release()
        return out


# -- would it fit ---------------------------------------------------------------------------
def available_mib() -> float:
    """Memory a stage may take on top of what the build holds: ``ALMA_DATA_AVAILABLE_MIB`` where
    set, else the system's available memory (``psutil.virtual_memory().available``)."""
    text = os.environ.get(AVAILABLE_ENV, "").strip()
    if text:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{AVAILABLE_ENV}={text!r}: give a number of MiB, e.g. {AVAILABLE_ENV}=4096") from None
    import psutil

    return psutil.virtual_memory().available / MIB


@dataclass
class ModelShape:
    params: int
    hidden: int
    layers: int
    vocab: int


def model_shape(model_path: str) -> ModelShape | None:
    """Parameter count (from the safetensors headers: no weights read) and the sizes the
    activations scale with (config.json), of a local model folder; None when it is not one."""
    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    params = 0
    try:
        for file in files:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, t in header.items():
                if name != "__metadata__":
                    count = 1
                    for d in t["shape"]:
                        count *= d
                    params += count
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, KeyError, struct.error):
        return None
    config = config.get("text_config", config)
    return ModelShape(params, int(config.get("hidden_size", 0)), int(config.get("num_hidden_layers", 0)),
                      int(config.get("vocab_size", 0)))


def training_estimate(shape: ModelShape, *, batch_size: int, max_length: int, trainer: str,
                      processes: int = 1, gradient_checkpointing: bool = True) -> tuple[float, str]:
    """MiB a training adds to the process that runs it, and what it is made of. Simple on
    purpose, for a warning, not a promise:

    - weights, gradients and AdamW's two moments, float32 (bf16 training keeps float32 weights
      under autocast): 16 bytes a parameter;
    - DPO: chosen and rejected go through the model together (twice the batch); its reference
      log-probabilities are computed before training, so no second model stays;
    - activations: with gradient checkpointing each layer keeps its input (batch x length x
      hidden, float32) and one layer at a time is recomputed (about 20 x that); without it,
      every layer keeps about 20 x that;
    - the loss: never the batch's full-vocabulary logits. SFT (training/lm_head.py) scores a
      chunk of labelled rows at a time (32 MiB of float32 logits; x 3 with its copies); DPO
      keeps TRL's tiles, about 4096 positions x vocabulary (float32, with its gradient: x 3).
    ``processes`` launched trainings each hold all of it."""
    rows = batch_size * (2 if trainer == "dpo" else 1)
    states = 16 * shape.params
    layer_input = rows * max_length * shape.hidden * 4
    per_layer = 20 * layer_input
    activations = (shape.layers * layer_input + per_layer) if gradient_checkpointing else shape.layers * per_layer
    if trainer == "dpo":
        loss = 3 * min(rows * max_length, 4096) * shape.vocab * 4
    else:
        from training.lm_head import rows_per_chunk

        loss = 3 * min(rows * max_length, rows_per_chunk(shape.vocab)) * shape.vocab * 4
    total = (states + activations + loss) / MIB * max(1, processes)
    what = (f"{shape.params / 1e6:.0f}M parameters: weights, gradients and AdamW states {states / MIB / 1024:.1f} GiB, "
            f"activations {activations / MIB / 1024:.1f} GiB, loss tiles {loss / MIB / 1024:.1f} GiB"
            + (f", x {processes} processes" if processes > 1 else ""))
    return total, what


def would_not_fit(needed_mib: float, what: str, fix: str) -> str | None:
    """The warning line where ``needed_mib`` exceeds the memory available, else None."""
    free = available_mib()
    if needed_mib <= free:
        return None
    return (f"may not fit in memory: needs about {needed_mib / 1024:.1f} GiB more ({what}), "
            f"{free / 1024:.1f} GiB available; {fix}")
