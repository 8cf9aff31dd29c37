"""Sample from a trained run: `python -m gpt2_jax.sample --workdir DIR --prompt TEXT [...]`."""

from __future__ import annotations

import argparse
import sys
import time

import jax

from gpt2_jax import tokenizer
from gpt2_jax.training.checkpoint import load_trained
from gpt2_jax.inference.decoding import decode_samples, generate
from gpt2_jax.errors import ConfigError, exits_on_user_error


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.sample", description=__doc__)
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument("--prompt", default="\n")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=200, help="0 = the whole vocabulary")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop_at_eot", action="store_true", help="end a sample at <|endoftext|>")
    parser.add_argument("--timing", action="store_true",
                        help="decode twice and report the second (compiled) run's tokens/s")
    args = parser.parse_args(argv)
    if args.temperature < 0:
        raise ConfigError(f"--temperature {args.temperature}: must be >= 0 (0 = greedy)")
    if args.num_samples < 1:
        raise ConfigError(f"--num_samples {args.num_samples}: must be at least 1")
    trained = load_trained(args.workdir, args.step)
    prompt = tokenizer.encode(args.prompt) or [tokenizer.EOT_TOKEN]

    def run():
        started = time.perf_counter()
        tokens = jax.block_until_ready(generate(
            trained.model, trained.params, prompt, args.max_new_tokens,
            num_samples=args.num_samples, temperature=args.temperature, top_k=args.top_k or None,
            seed=args.seed))
        return tokens, time.perf_counter() - started

    try:
        tokens, seconds = run()
        if args.timing:
            tokens, seconds = run()
    except ValueError as e:
        sys.exit(f"error: {e}")
    for i, text in enumerate(decode_samples(tokens, len(prompt), args.stop_at_eot)):
        print(f"--- sample {i + 1} (step {trained.step})\n{args.prompt}{text}")
    new_tokens = args.num_samples * args.max_new_tokens
    print(f"{new_tokens} tokens in {seconds:.2f} s: {new_tokens / seconds:,.0f} tokens/s "
          f"({'compiled' if args.timing else 'compilation included'}; "
          f"{args.num_samples} x {args.max_new_tokens}, {jax.devices()[0].device_kind})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
