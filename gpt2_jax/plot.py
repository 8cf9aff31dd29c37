"""Training curves of one or more runs, as llm.c's notebook draws them.

    python -m gpt2_jax.plot runs/gpt2_124m [runs/other ...] --out curves.png

Left: train loss (thin) and validation loss (thick) against tokens seen, skipped updates marked.
Then, when any run evaluated them: HellaSwag accuracy and the CORE metric, each with OpenAI
GPT-2's figures as horizontal lines. GPT-2's CORE is of the 22-task bundle, so its line is drawn
only beside runs scored on 22 tasks; a bundle of a few tasks of your own gets a curve per task.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from gpt2_jax.errors import UserError, exits_on_user_error  # noqa: E402
from gpt2_jax.training.metrics import read_rows  # noqa: E402

# HellaSwag acc_norm of OpenAI's checkpoints, scored like llm.c, as llm.c's GPT-2 reproductions
# report them (karpathy/llm.c discussions 481 and 677).
HELLASWAG_BASELINES = {"OpenAI GPT-2 124M": 0.295, "OpenAI GPT-2 1.5B": 0.489}
# CORE of OpenAI's GPT-2 1.5B as nanochat's README and dev/LEADERBOARD.md state it (the bar of its
# time-to-GPT-2 leaderboard).
CORE_BASELINES = {"OpenAI GPT-2 1.5B (nanochat)": 0.256525}
CORE_TASKS = 22  # in the DCLM CORE bundle, which that figure is of
FEW_TASKS = 4  # a bundle of at most this many tasks gets a curve per task


def read_run(run_dir: str | Path) -> tuple[list[dict], int]:
    """The run's metrics rows and its tokens per step (from config.json)."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.exists():
        raise UserError(f"{run_dir}: no metrics.jsonl (is this a run directory?)")
    rows = [row for _, row in read_rows(metrics_path)[0]]  # a torn last line is skipped
    config = json.loads((run_dir / "config.json").read_text())
    return rows, config["train"]["total_batch_size"]


def core_tasks(rows: list[dict]) -> list[str]:
    """The `core/<task>` keys of a run's CORE rows."""
    return sorted({k for r in rows if "core" in r for k in r if k.startswith("core/")})


def reference_lines(key: str, baselines: dict, runs: dict) -> dict:
    """GPT-2's figures to draw on a panel: CORE's only beside a run scored on its 22 tasks."""
    if key == "core" and not any(len(core_tasks(rows)) == CORE_TASKS for rows, _ in runs.values()):
        return {}
    return baselines


def plot_runs(run_dirs: list[str], out: str) -> None:
    runs = {Path(d).name or str(d): read_run(d) for d in run_dirs}
    panels = [(key, title, ylabel, baselines) for key, title, ylabel, baselines in (
        ("hellaswag_acc", "HellaSwag", "accuracy (acc_norm)", HELLASWAG_BASELINES),
        ("core", "CORE", "CORE (mean centered accuracy)", CORE_BASELINES))
        if any(key in r for rows, _ in runs.values() for r in rows)]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(7 + 6 * len(panels), 4.5),
                             squeeze=False)
    loss_ax = axes[0][0]
    for i, (name, (rows, tokens_per_step)) in enumerate(runs.items()):
        color = f"C{i}"
        train = [(r["step"] * tokens_per_step, r["loss"]) for r in rows if r.get("loss") is not None]
        val = [(r["step"] * tokens_per_step, r["val_loss"]) for r in rows if "val_loss" in r]
        if train:
            loss_ax.plot(*zip(*train), color=color, alpha=0.4, lw=1, label=f"{name} train")
        if val:
            loss_ax.plot(*zip(*val), color=color, lw=2, marker="o", ms=3, label=f"{name} val")
        skips, previous = [], 0
        for r in rows:
            if r.get("skipped", 0) > previous:
                skips.append((r["step"] * tokens_per_step, r["loss"]))
                previous = r["skipped"]
        if skips:
            loss_ax.scatter(*zip(*skips), color="red", marker="x", zorder=3,
                            label=f"{name} skipped updates")
    loss_ax.set(xlabel="tokens", ylabel="loss", title="loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    for ax, (key, title, ylabel, baselines) in zip(axes[0][1:], panels):
        for i, (name, (rows, tokens_per_step)) in enumerate(runs.items()):
            points = [(r["step"] * tokens_per_step, r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), color=f"C{i}", lw=2, marker="o", ms=3, label=name)
            if key == "core" and 1 < len(tasks := core_tasks(rows)) <= FEW_TASKS:
                for task, style in zip(tasks, (":", "-.", "--", (0, (1, 3)))):
                    ax.plot(*zip(*[(r["step"] * tokens_per_step, r[task]) for r in rows
                                   if task in r]), color=f"C{i}", lw=1, ls=style,
                            label=f"{name} {task.removeprefix('core/')}")
        for j, (label, value) in enumerate(reference_lines(key, baselines, runs).items()):
            ax.axhline(value, color=f"C{7 + j}", ls="--", label=f"{label} ({value:.4g})")
        ax.set(xlabel="tokens", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write it ({e.strerror})") from None
    print(f"wrote {out}")


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run directories (workdirs)")
    parser.add_argument("--out", default="curves.png", help="PNG file to write")
    args = parser.parse_args(argv)
    plot_runs(args.run_dirs, args.out)


if __name__ == "__main__":
    main()
