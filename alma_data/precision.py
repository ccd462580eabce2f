"""Which floating-point precision this machine computes fast: one answer for training and engines.

bfloat16 halves memory and, where the hardware has it, runs several times faster than
float32. Where it does not (an x86 CPU without AVX512-BF16 or AMX, e.g. an AVX2-only
EPYC), every bf16 operation is emulated: a bf16 matmul ran at 0.8 GFLOP/s there against
45.7 in float32, and SFT of the default recipe took 653 s for its first step. So ``auto``
means bf16 only where it is native. The choice is made on the machine that runs the work
and recorded in what it writes (checkpoint manifests, engine logs); the recipe keeps
``auto``, so the same recipe has one fingerprint on every machine.
"""

from __future__ import annotations

import functools
from typing import Literal

Precision = Literal["auto", "float32", "bfloat16"]


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (or the text given); None where unreadable."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, aarch64
            flags.update(value.split())
    return flags or None


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}
"""x86's AVX512-BF16 and AMX-BF16, Arm's BF16 extension."""


@functools.lru_cache(maxsize=None)
def cpu_bf16_native() -> bool:
    """True where the CPU has bf16 arithmetic instructions."""
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & NATIVE_BF16_FLAGS)
    # No /proc/cpuinfo (macOS, some containers): ask oneDNN, which also says yes for
    # AVX512 cores that emulate bf16 at tolerable speed.
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def bf16_native(device: str | None = None) -> bool:
    """Whether ``device`` (``cuda``/``cpu``; default: CUDA when visible) computes bf16 natively."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return False
        try:
            return bool(torch.cuda.is_bf16_supported())
        except (AssertionError, RuntimeError):
            # A device that says it is there but cannot be asked (a stand-in, a driver
            # mismatch): assume a current GPU, all of which have bf16.
            return True
    return cpu_bf16_native()


def resolve_bf16(setting: bool | str, device: str | None = None) -> bool:
    """``train.bf16``: ``true``/``false`` as given, ``auto`` as the hardware says."""
    if setting == "auto":
        return bf16_native(device)
    return bool(setting)


def pick_dtype(name: str, device: str | None = None):
    """An engine's ``dtype`` key as a torch dtype: ``auto`` is bf16 where native, else float32."""
    import torch

    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_native(device) else torch.float32


def describe(device: str | None = None) -> dict:
    """What a manifest records about the machine's precision support."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else _cpu_name()
    return {"device": device, "device_name": name, "bf16_native": bf16_native(device)}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
