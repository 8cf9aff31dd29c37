"""Sample from a trained run: `python -m gpt2_jax.sample --workdir DIR --prompt TEXT [...]`."""

from __future__ import annotations

import argparse
import sys
import time

import jax

from gpt2_jax import tokenizer
from gpt2_jax.training.checkpoint import load_trained
from gpt2_jax.errors import UserError, exits_on_user_error
from gpt2_jax.inference import complete


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.sample", description=__doc__)
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument("--prompt", default="\n")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=200, help="0 = the whole vocabulary")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling (1 = off)")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="sample i is seeded seed + i")
    parser.add_argument("--stop_at_eot", action="store_true", help="end a sample at <|endoftext|>")
    parser.add_argument("--timing", action="store_true",
                        help="decode twice and report the second (compiled) run's tokens/s")
    args = parser.parse_args(argv)
    for flag, ok, rule in (("--num_samples", args.num_samples >= 1, "at least 1"),
                           ("--max_new_tokens", args.max_new_tokens >= 1, "at least 1"),
                           ("--temperature", args.temperature >= 0, ">= 0 (0 = greedy)"),
                           ("--top_k", args.top_k >= 0, ">= 0 (0 = the whole vocabulary)"),
                           ("--top_p", 0 < args.top_p <= 1, "in (0, 1]")):
        if not ok:
            raise UserError(f"{flag} must be {rule}, not {getattr(args, flag[2:])}")
    trained = load_trained(args.workdir, args.step)
    prompt = tokenizer.encode(args.prompt) or [tokenizer.EOT_TOKEN]

    def run():
        started = time.perf_counter()
        samples = complete(trained.model.config, trained.params, prompt, args.max_new_tokens,
                           num_samples=args.num_samples, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                           stop_at_eot=args.stop_at_eot)
        return samples, time.perf_counter() - started

    samples, seconds = run()
    if args.timing:
        samples, seconds = run()
    for i, sample in enumerate(samples):
        print(f"--- sample {i + 1} (step {trained.step})\n{args.prompt}{sample.text}")
    new_tokens = sum(len(sample.tokens) for sample in samples)
    print(f"{new_tokens} tokens in {seconds:.2f} s: {new_tokens / seconds:,.0f} tokens/s "
          f"({'compiled' if args.timing else 'compilation included'}; "
          f"{args.num_samples} x {args.max_new_tokens}, {jax.devices()[0].device_kind})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
