"""Which kernel runs where, in one place: each Pallas kernel's config key, the models it computes
the right thing for, whether it can run on each device's shard of a mesh, and how `auto`
resolves. GPTConfig.check, config.model_config and the model all ask this module."""

from __future__ import annotations

import dataclasses
from typing import Callable

from gpt2_jax.errors import ConfigError
from gpt2_jax.ops.norm_kernel import MAX_WIDTH as NORM_KERNEL_WIDTH

CHOICES = ("auto", "pallas", "xla")  # of each model.<key>


@dataclasses.dataclass(frozen=True)
class Kernel:
    key: str  # model.<key>
    # Why a model cannot use the kernel (None when it can); `m` has the model fields.
    unsupported: Callable[[object], str | None]
    # Whether it can run on each device's rows of a mesh whose tensor axis spans `tensor` devices
    # (it has no SPMD partitioning rule, so it runs per device through sharding.per_device).
    per_device: Callable[[int], bool]


KERNELS = (
    # The loss needs whole rows of logits, which tensor parallelism splits (the vocabulary).
    Kernel("loss_kernel",
           lambda m: "has no logit softcap: set model.logit_softcap=0 or model.loss_kernel=xla"
           if m.logit_softcap else None,
           per_device=lambda tensor: tensor == 1),
    Kernel("gelu_kernel",
           lambda m: None if m.mlp_act == "gelu_tanh" else
           f"computes GELU, and model.mlp_act is {m.mlp_act!r}: set model.gelu_kernel=auto or xla",
           per_device=lambda tensor: True),
    Kernel("norm_kernel",
           lambda m: (f"computes LayerNorm, and model.norm is {m.norm!r}: set "
                      "model.norm_kernel=auto or xla") if m.norm != "layernorm" else
           (f"takes rows of at most {NORM_KERNEL_WIDTH} channels, and model.n_embd is "
            f"{m.n_embd}: set model.norm_kernel=auto or xla") if m.n_embd > NORM_KERNEL_WIDTH
           else None,
           per_device=lambda tensor: True),
)
KERNEL_KEYS = tuple(k.key for k in KERNELS)


def check(m) -> None:
    """Reject an explicit `pallas` for a model the kernel cannot compute (GPTConfig.check has
    already checked that each choice is one of CHOICES)."""
    for kernel in KERNELS:
        reason = kernel.unsupported(m)
        if getattr(m, kernel.key) == "pallas" and reason:
            raise ConfigError(f"model.{kernel.key}=pallas {reason}")


def resolve(m, backend: str, devices: int, tensor: int) -> dict[str, str]:
    """Each kernel key's choice for this backend and mesh. auto takes Pallas on GPUs where the
    model can use it: on any mesh if it runs per device, else on a single GPU only. An explicit
    pallas on several devices needs a kernel that runs per device."""
    chosen = {}
    for kernel in KERNELS:
        choice, per_device = getattr(m, kernel.key), kernel.per_device(tensor)
        if choice == "auto":
            usable = backend == "gpu" and kernel.unsupported(m) is None
            choice = "pallas" if usable and (devices == 1 or per_device) else "xla"
        elif choice == "pallas" and devices > 1 and not per_device:
            raise ConfigError(
                f"model.{kernel.key}=pallas runs on each device's whole rows (its kernel has no "
                f"partitioning rule), which this mesh of {devices} devices splits (mesh.tensor): "
                "use auto or xla")
        chosen[kernel.key] = choice
    return chosen


def runs_pallas(cfg, key: str) -> bool:
    """Whether the model computes `key`'s operation with the Pallas kernel (a resolved choice
    of pallas, for a model the kernel computes the right thing for)."""
    kernel = next(k for k in KERNELS if k.key == key)
    return getattr(cfg, key) == "pallas" and kernel.unsupported(cfg) is None
