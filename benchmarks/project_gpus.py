"""Project a 2-GPU measurement to n GPUs of one NVSwitch node (on paper, for BENCHMARKS.md).

    python benchmarks/project_gpus.py --one_gpu 47100 --two_gpu 86354 --tokens_per_step 65536 \
        --micro_tokens 16384 --overhead per_step --gpus 8 --target_tokens_per_step 1048576 \
        --steps 32000 --node_dollars_per_hour 28

The 2-GPU step is the 1-GPU compute split in two plus an overhead (collectives, and whatever the
sharding adds). That overhead is taken per step (data parallel, ZeRO-1: one gradient reduction
and one parameter gather per step) or per micro-step (FSDP: weights gathered and gradients
scattered in every micro-step), and scaled by the ring's bus volume, 2(n-1)/n of the 2-GPU one
(1.75x at 8): pessimistic where the overhead was partly hidden, and it assumes each GPU of the
bigger node has at least the 2-GPU machine's bus bandwidth (benchmarks/allreduce.py).
"""

from __future__ import annotations

import argparse
import dataclasses


@dataclasses.dataclass(frozen=True)
class Projection:
    step_s: float
    tokens_per_sec: float
    scaling: float  # against one GPU
    overhead_s: float  # per step at n GPUs


def project(one_gpu: float, two_gpu: float, tokens_per_step: int, micro_tokens: int,
            per_micro_step: bool, gpus: int, target_tokens_per_step: int) -> Projection:
    """n-GPU step time from 1- and 2-GPU tokens/s measured at `tokens_per_step`."""
    overhead_2 = tokens_per_step / two_gpu - tokens_per_step / one_gpu / 2
    if per_micro_step:
        overhead_2 /= tokens_per_step / (2 * micro_tokens)
    overhead_n = overhead_2 * (2 * (gpus - 1) / gpus)
    if per_micro_step:
        overhead_n *= target_tokens_per_step / (gpus * micro_tokens)
    step = target_tokens_per_step / gpus / one_gpu + overhead_n
    rate = target_tokens_per_step / step
    return Projection(step, rate, rate / one_gpu, overhead_n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one_gpu", type=float, required=True, help="tokens/s on 1 GPU")
    parser.add_argument("--two_gpu", type=float, required=True, help="tokens/s on 2 GPUs, same machine")
    parser.add_argument("--tokens_per_step", type=int, required=True, help="of the measurements")
    parser.add_argument("--micro_tokens", type=int, required=True, help="tokens per GPU per micro-step")
    parser.add_argument("--overhead", choices=("per_step", "per_micro_step"), required=True)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--target_tokens_per_step", type=int, required=True)
    parser.add_argument("--steps", type=int, default=0, help="a run's steps, for its hours and cost")
    parser.add_argument("--node_dollars_per_hour", type=float, default=0.0)
    args = parser.parse_args(argv)
    p = project(args.one_gpu, args.two_gpu, args.tokens_per_step, args.micro_tokens,
                args.overhead == "per_micro_step", args.gpus, args.target_tokens_per_step)
    line = (f"{args.gpus} GPUs (projected): {1000 * p.step_s:,.1f} ms per "
            f"{args.target_tokens_per_step:,}-token step ({1000 * p.overhead_s:,.1f} ms overhead), "
            f"{p.tokens_per_sec:,.0f} tok/s, {p.scaling:.2f}x one GPU")
    if args.steps:
        hours = args.steps * p.step_s / 3600
        line += f"; {args.steps:,} steps in {hours:.1f} h"
        if args.node_dollars_per_hour:
            line += f", ${hours * args.node_dollars_per_hour:,.0f}"
    print(line)


if __name__ == "__main__":
    main()
