"""benchmarks/results_table.py renders the named runs' rows of results.jsonl as BENCHMARKS.md's
table: one line per row, in file order, with the figures formatted and the row's note kept."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_table",
                                              ROOT / "benchmarks" / "results_table.py")
results_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_table)

ROW = {"date": "2026-11-26", "gpu": "2x NVIDIA H200", "jax": "0.11.2", "config": "gpt2_1558m",
       "overrides": ["--config.mesh.data=1", "--config.mesh.fsdp=2"], "data": "synthetic",
       "steps": 10, "tokens_per_sec": 97313.4, "tokens_per_sec_last": 97208.0, "mfu": 0.483,
       "peak_memory_gib": 55.41, "run_id": "h200x2-20261126-ao",
       "command": "python -m gpt2_jax.bench --config configs/gpt2_1558m.py", "note": "a | b"}


def test_only_the_named_runs_rows_in_file_order(tmp_path, capsys):
    rows = [ROW, {**ROW, "run_id": "h100-20261126-aq", "tokens_per_sec": 1.0},
            {**ROW, "tokens_per_sec": 95201.0, "tokens_per_sec_last": 95201.0, "mfu": None}]
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results_table.main(["h200x2-20261126-ao", "--jsonl", str(jsonl)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| date | GPU |") and lines[1].count("|---") == 11
    assert len(lines) == 4
    cells = [c.strip() for c in lines[2].strip("|").split(" | ")]
    assert cells[3:9] == ["ao", "gpt2_1558m: mesh.data=1 mesh.fsdp=2", "synthetic, 10",
                          "97,313 (97,208)", "48.3%", "55.4 GiB"]
    assert cells[9] == "a / b"  # a bar would split the cell
    assert "| 95,201 |" in lines[3] and "| 48.3% |" not in lines[3]
