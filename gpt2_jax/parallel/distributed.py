"""Multi-process start-up: one JAX process per host (or per group of local devices), all of them
one global mesh. Must run before anything touches a device."""

from __future__ import annotations

import os

import jax

from gpt2_jax.errors import UserError


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: str | None = None) -> None:
    """Join the other processes of this run, if there are any.

    Explicit arguments win; otherwise a SLURM job with several tasks is detected and JAX reads the
    coordinator, process count and id from SLURM's environment. A lone process does nothing.
    `local_device_ids` ("0" or "0,1") picks the GPUs this process drives while every GPU stays
    visible to it, so NCCL can still reach the others' GPUs directly (CUDA_VISIBLE_DEVICES would
    hide them).
    """
    ids = None
    if local_device_ids:
        try:
            ids = [int(i) for i in local_device_ids.split(",")]
        except ValueError:
            raise UserError(f"--local_device_ids must be GPU numbers separated by commas, like 0 "
                            f"or 0,1, not {local_device_ids!r}") from None
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   local_device_ids=ids)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
