"""BENCHMARKS.md and README's performance table are what benchmarks/results_table.py makes of the
committed results.jsonl, and the generator sets llm.c's row from the same run_id beside ours."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_table",
                                              ROOT / "benchmarks" / "results_table.py")
results_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_table)

GPU = "1x NVIDIA H100 80GB HBM3"
NO_CURATION = {"levers": [], "not_current": []}


def _row(run_id, config, tokens_per_sec, mode="step", overrides=(), gpu=GPU):
    return {"date": "2026-12-03", "gpu": gpu, "jax": None if mode == "llm.c" else "0.11.2",
            "config": config, "overrides": list(overrides), "mode": mode, "run_id": run_id,
            "command": f"measure {config} {' '.join(overrides)}".strip(), "data": "synthetic",
            "steps": 10, "tokens_per_step": 65536, "tokens_per_sec": tokens_per_sec,
            "tokens_per_sec_last": tokens_per_sec, "mfu": None, "peak_memory_gib": 10.0}


def _write(tmp_path, rows):
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return results_table.load_rows(path)


def test_benchmarks_md_and_the_readme_table_are_generated_from_the_committed_rows():
    results_table.main(["--check"])  # exits 1 naming the stale file


def test_llmc_of_the_same_run_id_size_and_gpus_is_set_beside_ours(tmp_path):
    rows = _write(tmp_path, [
        _row("old", "gpt2_124m", 400_000), _row("old", "llm.c -e d12", 999_999, mode="llm.c"),
        _row("new", "gpt2_124m", 550_000), _row("new", "llm.c -e d12", 500_000, mode="llm.c"),
        _row("new", "llm.c -e d48", 50_000, mode="llm.c"),
        _row("new", "llm.c -e d12", 1_000_000, mode="llm.c", gpu="2x NVIDIA H100 80GB HBM3")])
    (current,) = results_table.current_rows(rows, set())
    assert current["run_id"] == "new"  # the newest row of the config
    assert [r["tokens_per_sec"] for r in results_table.llmc_rows(current, rows)] == [500_000]
    table = results_table.readme_table(rows, NO_CURATION)
    assert "| gpt2_124m | 65,536 tokens | step bench | 550,000 | 500,000 | **+10.0%** |" in table


def test_lever_rows_and_rows_set_aside_are_not_a_configs_current_figure(tmp_path):
    rows = _write(tmp_path, [
        _row("r", "gpt2_124m", 500_000),
        _row("r", "gpt2_124m", 480_000, overrides=["--config.model.loss_kernel=xla"]),
        _row("r", "gpt2_124m", 490_000),  # e.g. older code run from a copy
        _row("r", "gpt2_124m", 520_000, overrides=["--config.model.fp8=True"])])
    current = results_table.current_rows(rows, {"r#3"})
    assert [(r["ref"], results_table.run_as(r)) for r in current] == [
        ("r#1", "step bench"), ("r#4", "step bench, FP8")]


def test_a_lever_is_the_mean_of_the_rows_it_names_on_each_side(tmp_path):
    rows = _write(tmp_path, [
        _row("r", "gpt2_124m", 100, overrides=["--config.model.gelu_kernel=xla"]),
        _row("r", "gpt2_124m", 110), _row("r", "gpt2_124m", 102,
                                          overrides=["--config.model.gelu_kernel=xla"]),
        _row("r", "gpt2_124m", 112)])
    lever = {"lever": "model.gelu_kernel=pallas", "what": "the GELU kernel",
             "before": ["r#1", "r#3"], "after": ["r#2", "r#4"]}
    (line,) = results_table.levers_table(rows, [lever])[2:]
    assert "| 101 | 111 | **+9.9%** |" in line and "r#1, r#3 -> r#2, r#4" in line
    with pytest.raises(SystemExit, match="r#9"):
        results_table.levers_table(rows, [{**lever, "after": ["r#9"]}])


def test_the_readme_table_replaces_only_what_is_between_its_markers():
    readme = f"intro\n{results_table.README_START}\nold table\n{results_table.README_END}\nrest\n"
    assert results_table.with_readme_table(readme, "new") == (
        f"intro\n{results_table.README_START}\nnew\n{results_table.README_END}\nrest\n")
    with pytest.raises(SystemExit, match="README.md lacks"):
        results_table.with_readme_table("no markers", "new")


def test_quality_rows_show_their_final_validation_loss(tmp_path):
    rows = _write(tmp_path, [
        {**_row("q", "gpt2_350m", 1, mode="quality", overrides=["--config.model.fp8=True"]),
         "val_loss": 3.1234, "tokens": 65_536_000},
        {**_row("q", "gpt2_124m", 1, mode="train"), "val_loss": {"250": 4.0, "1000": 3.25}}])
    lines = results_table.quality_table(rows, GPU)
    assert "| gpt2_350m | model.fp8=True | 10 | 65,536,000 | 3.1234 |" in lines[2]
    assert "| gpt2_124m | - | 10 |  | 3.2500 |" in lines[3]


def test_the_decode_table_leaves_out_the_xla_only_baselines():
    def decode(tokens_per_sec, xla_only):
        return {**_row("d", "gpt2_124m", tokens_per_sec, mode="decode"), "engine": "gpt2_jax",
                "batch": 1, "prompt_tokens": 16, "new_tokens": 256, "ms_per_step": 1.0,
                "ttft_ms": 5.0, "xla_only": xla_only}

    table = "\n".join(results_table.decode_table([decode(1_200, False), decode(1_100, True)],
                                                 GPU))
    assert "| 1,200 |" in table and "1,100" not in table
