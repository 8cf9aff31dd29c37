"""The CORE metric: our batched scorer against a plain, one-item-at-a-time reimplementation of
nanochat's core_eval.py (Jinja prompts, per-item forward), and the bundle's error lines."""

import csv
import json
import random

import jax
import numpy as np
import pytest
import yaml
from jinja2 import Template

from gpt2_jax import plot, tokenizer
from gpt2_jax.parallel import sharding
from gpt2_jax.data.shards import write_shard
from gpt2_jax.inference import complete
from gpt2_jax.errors import EvalDataError
from gpt2_jax.evaluation import core, scoring
from gpt2_jax.model import GPT, GPTConfig, init_params

from helpers import TINY, run_module

WORDS = ("the cat sat on a mat while rain fell over old hills and every bird sang of "
         "summer light river stone green quiet morning bread").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_bundle(directory, items: int = 7) -> None:
    """A bundle of three tasks, one of each type, with few-shot prompts long enough that some
    rows exceed the tiny model's block and are cut from the left."""
    rng = random.Random(0)
    data = {
        "mc.jsonl": [{"query": "Q: " + sentence(rng, 12),
                      "choices": [sentence(rng, rng.randint(1, 3)) for _ in range(3)],
                      "gold": rng.randrange(3)} for _ in range(items)],
        "schema.jsonl": [{"context_options": [sentence(rng, rng.randint(3, 6)) for _ in range(2)],
                          "continuation": sentence(rng, 3), "gold": rng.randrange(2)}
                         for _ in range(items)],
        # trailing whitespace in the context: the reference trims it
        "lm.jsonl": [{"context": sentence(rng, 8) + " ", "continuation": sentence(rng, 1)}
                     for _ in range(items)],
    }
    (directory / "eval_data").mkdir(parents=True)
    for name, rows in data.items():
        (directory / "eval_data" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = [{"label": "mc", "icl_task_type": "multiple_choice", "dataset_uri": "mc.jsonl",
              "num_fewshot": [3], "continuation_delimiter": " Answer:"},
             {"label": "schema", "icl_task_type": "schema", "dataset_uri": "schema.jsonl",
              "num_fewshot": [1]},
             {"label": "lm", "icl_task_type": "language_modeling", "dataset_uri": "lm.jsonl",
              "num_fewshot": [2]}]
    (directory / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": tasks}))
    with open(directory / "eval_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Eval Task", "Task Category", "Random baseline"])
        writer.writerows([["mc", "x", 33.3], ["schema", "x", 50], ["lm", "x", 0]])


# -- the reference, one item at a time ------------------------------------------------------------

SHOTS = {
    "multiple_choice": ("{{ e.query }}{{ d }}{{ e.choices[e.gold] }}",
                        "{{ item.query }}{{ d }}{{ option }}", "choices"),
    "schema": ("{{ e.context_options[e.gold] }}{{ d }}{{ e.continuation }}",
               "{{ option }}{{ d }}{{ item.continuation }}", "context_options"),
}


def reference_prompts(task_type, item, shots, d):
    loop = "{%- for e in shots -%}\n" + "{shot}\n\n{% endfor -%}\n"
    if task_type == "language_modeling":
        body = loop.replace("{shot}", "{{ e.context | trim }}{{ d }}{{ e.continuation }}")
        template = Template(body + "{{ item.context | trim }}{{ d }}"
                            "{% if with_continuation %}{{ item.continuation }}{% endif %}")
        return [template.render(shots=shots, item=item, d=d, with_continuation=False).strip(),
                template.render(shots=shots, item=item, d=d, with_continuation=True)]
    shot, last, options = SHOTS[task_type]
    template = Template(loop.replace("{shot}", shot) + last)
    return [template.render(shots=shots, item=item, d=d, option=o) for o in item[options]]


def reference_task(task, forward, block_size):
    """Per item: correct or not, and the mean loss of each option (nanochat's evaluate_example
    written out plainly: rows of one item padded together, cropped to the block)."""
    outcomes, option_losses = [], []
    for idx, item in enumerate(task.items):
        shots = []
        if task.num_fewshot:
            others = [i for i in range(len(task.items)) if i != idx]
            shots = [task.items[i] for i in random.Random(1234 + idx).sample(others, task.num_fewshot)]
        prompts = reference_prompts(task.task_type, item, shots, task.delimiter)
        rows = [[tokenizer.EOT_TOKEN] + tokenizer.encode(p) for p in prompts]
        if task.task_type == "multiple_choice":
            start = next((i for i in range(min(map(len, rows)))
                          if len({r[i] for r in rows}) > 1), min(map(len, rows)))
            spans = [(start, len(r)) for r in rows]
        elif task.task_type == "schema":
            suffix = next((i for i in range(min(map(len, rows)))
                           if len({r[-1 - i] for r in rows}) > 1), min(map(len, rows)))
            spans = [(len(r) - suffix, len(r)) for r in rows]
        else:
            spans, rows = [(len(rows[0]), len(rows[1]))], [rows[1]]
        cropped = []
        for r, (s, e) in zip(rows, spans):
            cut = max(len(r) - block_size, 0)
            cropped.append((r[cut:], s - cut, e - cut))
        losses = []
        for r, s, e in cropped:
            padded = np.full((1, block_size), tokenizer.EOT_TOKEN, np.int32)
            padded[0, :len(r)] = r
            logits = np.asarray(forward(padded), np.float64)[:len(r)]
            log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
            token_loss = log_z[:-1] - logits[np.arange(len(r) - 1), r[1:]]
            losses.append(token_loss[s - 1:e - 1].mean())
            if task.task_type == "language_modeling":
                outcomes.append(bool(np.all(logits.argmax(1)[s - 1:e - 1] == np.array(r[s:e]))))
        if task.task_type != "language_modeling":
            outcomes.append(losses.index(min(losses)) == item["gold"])
        option_losses += losses
    return outcomes, option_losses


@pytest.fixture(scope="module")
def tiny():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64))
    return model, init_params(model, jax.random.key(3))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bundle")
    write_bundle(directory)
    return directory


@pytest.mark.slow
def test_core_equals_an_unbatched_reference_of_nanochats_scoring(tiny, bundle):
    model, params = tiny
    tasks = core.load_bundle(bundle)
    prepared = core.prepare(tasks, model.config.block_size)
    assert any(len(r.tokens) == 64 for r in prepared.rows)  # some rows were cut to the block
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})  # rows over 8 devices
    with jax.set_mesh(mesh):
        scores = scoring.score_rows(model, params, prepared.rows, mesh, batch_tokens=128)
        result = core.evaluate(model, params, prepared, mesh, batch_tokens=128)
    forward = jax.jit(lambda t: model.apply({"params": params}, t)[0])
    centered = []
    for t, task in enumerate(tasks):
        outcomes, losses = reference_task(task, forward, model.config.block_size)
        np.testing.assert_allclose(scores.mean[prepared.task_of_row == t], losses, rtol=1e-4)
        assert result[f"core_accuracy/{task.label}"] == np.mean(outcomes)
        centered.append((np.mean(outcomes) - task.baseline / 100) / (1 - task.baseline / 100))
        assert result[f"core/{task.label}"] == pytest.approx(centered[-1])
    assert result["core"] == pytest.approx(np.mean(centered))


def test_a_span_is_greedy_only_when_argmax_reproduces_every_token(tiny):
    model, params = tiny
    prompt = tokenizer.encode("the cat sat on the")
    tokens = prompt + list(complete(model.config, params, prompt, 4, temperature=0)[0].tokens)
    wrong_last = tokens[:-1] + [(tokens[-1] + 1) % tokenizer.VOCAB_SIZE]
    rows = [scoring.Row(np.array(t, np.int32), len(prompt), len(t)) for t in (tokens, wrong_last)]
    assert scoring.score_rows(model, params, rows).greedy.tolist() == [True, False]


def test_bundle_order_and_fewshot_follow_the_reference_seeds(bundle):
    items = [json.loads(line) for line in (bundle / "eval_data" / "mc.jsonl").read_text().splitlines()]
    random.Random(1337).shuffle(items)
    task = core.load_bundle(bundle, max_per_task=5)[0]
    assert task.items == items[:5]
    shots = core.fewshot_examples(task.items, 2, 3)
    assert task.items[2] not in shots and len(shots) == 3


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "core.yaml").unlink(), "core.yaml: cannot read"),
    (lambda d: (d / "core.yaml").write_text("icl_tasks: [unclosed"), "core.yaml: not YAML"),
    (lambda d: (d / "core.yaml").write_text("tasks: []"), "core.yaml: no 'icl_tasks' list"),
    (lambda d: (d / "eval_meta_data.csv").unlink(), "eval_meta_data.csv: cannot read"),
    (lambda d: (d / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nmc,1\n"),
     "eval_meta_data.csv: no random baseline for task 'schema'"),
    (lambda d: (d / "eval_data" / "lm.jsonl").unlink(), "lm.jsonl: cannot read"),
    (lambda d: (d / "eval_data" / "schema.jsonl").write_text('{"gold": 0}\n'),
     "schema.jsonl:1: a schema item needs 'context_options', 'continuation'"),
    (lambda d: (d / "eval_data" / "mc.jsonl").write_text("{oops\n"), "mc.jsonl:1: not a JSON"),
])
def test_a_missing_or_malformed_bundle_file_is_an_error_naming_it(tmp_path, damage, message):
    write_bundle(tmp_path, items=4)
    damage(tmp_path)
    with pytest.raises(EvalDataError, match=message):
        core.load_bundle(tmp_path)


def test_missing_bundle_directory_is_a_clear_error(tmp_path):
    with pytest.raises(EvalDataError, match="--eval_bundle .*: no such directory"):
        core.find_or_download(str(tmp_path / "absent"))


@pytest.fixture(scope="module")
def core_run(tmp_path_factory, bundle):
    """A tiny run that scored CORE during training (`train.core_every`) and checkpointed."""
    cwd = tmp_path_factory.mktemp("core_run")
    result = run_module("gpt2_jax.train", *TINY, "--config.train.max_steps=2",
                        "--config.train.core_every=2", f"--config.train.core_bundle={bundle}",
                        "--workdir", "run", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CORE" in result.stdout + result.stderr
    return cwd / "run"


@pytest.mark.slow
def test_evaluate_core_prints_the_table_and_matches_the_in_training_figure(core_run, bundle):
    rows = [json.loads(line) for line in (core_run / "metrics.jsonl").read_text().splitlines()]
    in_training = [r for r in rows if "core" in r][-1]
    assert in_training["step"] == 2 and {"core/mc", "core/schema", "core/lm"} <= set(in_training)
    result = run_module("gpt2_jax.evaluate", "--workdir", str(core_run), "--core",
                        "--eval_bundle", str(bundle), "--no_hellaswag", "--samples", "0",
                        cwd=core_run)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.split()[:1] == ["schema"] for line in lines)
    assert any(line.startswith("CORE ") for line in lines) and "HellaSwag" not in result.stdout
    last = json.loads((core_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["core"] == pytest.approx(in_training["core"], abs=1e-9)


@pytest.mark.slow
def test_evaluate_core_with_a_broken_bundle_is_one_error_line(core_run, tmp_path):
    write_bundle(tmp_path, items=4)
    (tmp_path / "eval_data" / "lm.jsonl").unlink()
    result = run_module("gpt2_jax.evaluate", "--workdir", str(core_run), "--core",
                        "--eval_bundle", str(tmp_path), "--no_hellaswag", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and "lm.jsonl" in errors[0]


def test_training_with_core_and_no_bundle_fails_before_starting(tiny_config, tmp_path):
    from gpt2_jax.errors import ConfigError
    from gpt2_jax.training.loop import core_tasks

    c = tiny_config("--config.train.core_every=10", f"--config.train.core_bundle={tmp_path / 'x'}")
    with pytest.raises(ConfigError, match="train.core_every=10 needs the CORE eval bundle"):
        core_tasks(c)


@pytest.mark.parametrize("tasks", [22, 2])
def test_plot_draws_core_with_gpt2_reference_only_for_the_whole_bundle(tmp_path, tasks):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"total_batch_size": 1024}}))
    scores = lambda core: {"core": core, **{f"core/task{i}": core for i in range(tasks)}}  # noqa: E731
    rows = [{"step": s, "loss": 10 - s / 10} for s in range(1, 20)]
    rows += [{"step": 10, **scores(0.01)}, {"step": 19, "val_loss": 8.0, **scores(0.03)}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curves.png"
    plot.main([str(run), "--out", str(out)])
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 13 * 110  # two panels: loss and CORE
    runs = {"run": plot.read_run(run)}
    lines = plot.reference_lines("core", plot.CORE_BASELINES, runs)
    assert lines == (plot.CORE_BASELINES if tasks == 22 else {})


def test_heldout_bundle_holds_predictable_last_words_and_shuffled_sentences(tmp_path):
    from gpt2_jax.evaluation import heldout_bundle

    text = tokenizer.shipped_text()[-60_000:]
    write_shard(tmp_path / "val_000.bin", np.concatenate(
        [tokenizer.tokenize_document(text[:30_000]), tokenizer.tokenize_document(text[30_000:])]))
    heldout_bundle.main(["--shards", str(tmp_path / "val_*.bin"), "--out", str(tmp_path / "b"),
                         "--items", "5", "--context_words", "40"])
    last_word, word_order = core.load_bundle(tmp_path / "b")
    assert last_word.task_type == "language_modeling" and last_word.baseline == 0
    assert word_order.task_type == "multiple_choice" and word_order.baseline == 25
    assert len(last_word.items) == len(word_order.items) == 5
    for item in last_word.items:
        assert len(item["context"].split()) >= 39 and item["continuation"].isalpha()
        assert item["continuation"].lower() in item["context"].lower()
    for item in word_order.items:
        real, *shuffled = [item["choices"][item["gold"]],
                           *(c for i, c in enumerate(item["choices"]) if i != item["gold"])]
        assert len(set(item["choices"])) == 4 and real[-1] in ".!?\"'"
        assert all(sorted(c.split()) == sorted(real.split()) for c in shuffled)
        assert all(c.split()[0] == real.split()[0] and c.split()[-1] == real.split()[-1]
                   for c in shuffled)  # only the words between move
    assert len({item["gold"] for item in word_order.items}) > 1  # the answer's place varies
    with pytest.raises(SystemExit, match="error: --items 0: must be at least 1"):
        heldout_bundle.main(["--shards", str(tmp_path / "val_*.bin"), "--out", str(tmp_path / "c"),
                             "--items", "0"])
    assert not (tmp_path / "c").exists()
    before = {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=rf"error: --out {tmp_path / 'b'}: exists and is not an "):
        heldout_bundle.main(["--shards", str(tmp_path / "val_*.bin"), "--out", str(tmp_path / "b"),
                             "--items", "5", "--context_words", "40"])
    assert {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()} == before
    prepared = core.prepare([last_word, word_order], 1024)
    assert all(len(r.tokens) > r.end - r.start >= 1 for r in prepared.rows)
