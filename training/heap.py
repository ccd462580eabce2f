"""Give glibc's free heap memory back to the system after each decoder layer of a CPU training.

On the CPU a training's tensors come from glibc's malloc. Each decoder layer's forward keeps
a few tensors (the input gradient checkpointing saves, or the activations the backward
needs) and frees many more, of other sizes; in the backward each layer keeps its parameters'
gradients and frees its activations. Kept and freed blocks interleave, and glibc hands the
holes between kept blocks back to the system only when asked (``malloc_trim``): in the
default recipe's judge training (SmolLM2-135M, batch 8, float32) a step's forward grew the
resident set by 0.5 GiB where its tensors grew by 0.2 GiB, the step peaked 0.9 GiB above
what it did with the holes given back, and ``malloc_trim`` after the step gave 1.1 GiB back.

:func:`trim_between_layers` asks after each decoder layer's forward and after each layer's
backward (when its first parameter's gradient is added up): about 60 calls a step for 30
layers, each some milliseconds. It changes no number the training computes.
"""

from __future__ import annotations

ENABLED = True
"""False: no trimming (benchmarks/train_memory.py measures both)."""


def decoder_layers(model) -> list:
    """The model's repeated blocks: transformers' ``GradientCheckpointingLayer`` modules."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def trim_between_layers(model) -> int:
    """Hook ``malloc_trim`` after each decoder layer's forward and backward while the layer's
    weights are on the CPU; the number of layers hooked (0 without glibc, or when off)."""
    from alma_data.memory import trim_heap

    if not ENABLED or not trim_heap():
        return 0
    layers = decoder_layers(model)
    for layer in layers:
        first = next(layer.parameters(), None)
        if first is None:
            continue

        def after_forward(module, args, output, p=first):
            if p.device.type == "cpu":
                trim_heap()

        def after_backward(p):
            if p.device.type == "cpu":
                trim_heap()

        layer.register_forward_hook(after_forward)
        if first.requires_grad:
            first.register_post_accumulate_grad_hook(after_backward)
    return len(layers)
