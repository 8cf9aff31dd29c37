"""The lm-evaluation-harness adapter against the harness's own Hugging Face model on the same
weights (a tiny random GPT-2 exported with `hf export`): three local tasks, one per request
kind (multiple choice, rolling log-likelihood, generation), give the same per-item
log-likelihoods, accuracies and greedy generations; and the two ways users run it."""

import json
import sys

import jax
import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the harness's hf model needs it

from gpt2_jax import evaluate, hf, lm_eval as lm_eval_command  # noqa: E402
from gpt2_jax.config import load_config, model_config  # noqa: E402
from gpt2_jax.evaluation import lm_eval_adapter  # noqa: E402  registers `gpt2_jax` with the harness
from gpt2_jax.model import GPT, init_params  # noqa: E402
from gpt2_jax.training.checkpoint import save_params  # noqa: E402

from helpers import TINY  # noqa: E402

CONTEXT = 64
TASKS = ["tiny_mc", "tiny_ppl", "tiny_gen"]
WORDS = ("the cat sat on a mat while rain fell over old hills and every bird sang of summer "
         "light river stone green quiet morning bread").split()


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HF_DATASETS_OFFLINE", "1")
        m.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A params-only checkpoint of a random tiny GPT-2 and its `hf export`."""
    root = tmp_path_factory.mktemp("lm_eval")
    c = load_config(None, [*TINY, f"--config.model.block_size={CONTEXT}"])
    params = init_params(GPT(model_config(c, devices=1, tensor=1)), jax.random.key(0))
    save_params(root / "run" / "checkpoints", 0, params, c)
    hf.main(["export", "--workdir", str(root / "run"), "--out", str(root / "hf")])
    return root


def sentence(rng, n):
    return " ".join(rng.choice(WORDS, n))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Task YAMLs over jsonl files: rolling documents longer than the context (several windows),
    and generation prompts longer than the context minus max_gen_toks (left-truncated)."""
    directory = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(0)
    data = {
        "mc": [{"query": "Q: " + sentence(rng, 8), "choices": [sentence(rng, k) for k in (1, 2, 3)],
                "gold": int(rng.integers(3))} for _ in range(4)] + [
            {"query": "", "choices": ["cat", "dog"], "gold": 0}],  # an empty context
        "ppl": [{"text": sentence(rng, n)} for n in (5, 70, 150)],
        "gen": [{"prompt": sentence(rng, n), "answer": "the"} for n in (3, 12, 60)],
    }
    for name, rows in data.items():
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n"
    (directory / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\n{common}    test: {directory / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{query}}'\ndoc_to_choice: choices\n"
        "doc_to_target: gold\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (directory / "tiny_ppl.yaml").write_text(
        f"task: tiny_ppl\n{common}    test: {directory / 'ppl.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (directory / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}    test: {directory / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['e', \"\\n\"]\n  max_gen_toks: 10\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return directory


def harness(model, model_args, tasks, **kwargs):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=TASKS, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False), **kwargs)


@pytest.fixture(scope="module")
def both(run, tasks):
    """The harness's results with samples: ours (by its registered name) and its hf model."""
    ours = harness("gpt2_jax", f"workdir={run / 'run'}", tasks)
    theirs = harness("hf", f"pretrained={run / 'hf'},dtype=float32", tasks, device="cpu",
                     batch_size=4)
    return ours, theirs


def responses(output, task):
    return [s["resps"] for s in sorted(output["samples"][task], key=lambda s: s["doc_id"])]


@pytest.mark.slow
def test_loglikelihoods_match_the_harness_hf_model(both):
    ours, theirs = both
    differences = []
    for task in ("tiny_mc", "tiny_ppl"):
        a, b = responses(ours, task), responses(theirs, task)
        assert len(a) == len(b) > 0
        for doc_a, doc_b in zip(a, b):
            for (mine,), (hers,) in zip(doc_a, doc_b):  # rolling: a number; else (ll, greedy)
                mine, hers = np.atleast_1d(mine), np.atleast_1d(hers)
                differences.append(abs(mine[0] - hers[0]))
                assert list(mine[1:]) == list(hers[1:])
    assert max(differences) < 1e-4, max(differences)  # rolling sums: float32 over whole documents
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tiny_mc"][metric] == theirs["results"]["tiny_mc"][metric]
    for metric in ("word_perplexity,none", "bits_per_byte,none"):
        assert ours["results"]["tiny_ppl"][metric] == pytest.approx(
            theirs["results"]["tiny_ppl"][metric], rel=1e-5)


@pytest.mark.slow
def test_greedy_generations_match_the_harness_hf_model(both):
    ours, theirs = both
    generated = responses(ours, "tiny_gen")
    assert generated == responses(theirs, "tiny_gen")
    assert any(g[0][0] for g in generated)  # the random model's text, cut at its first "e"


@pytest.mark.slow
def test_evaluate_prints_the_table_and_reports_the_harness_results(run, tasks, tmp_path, capsys):
    report = tmp_path / "report.json"
    evaluate.main(["--workdir", str(run / "run"), "--lm_eval", "tiny_mc,tiny_ppl",
                   "--lm_eval_include", str(tasks), "--limit", "2", "--no_hellaswag",
                   "--samples", "0", "--val_batches", "1", "--report", str(report)])
    out = capsys.readouterr().out
    assert "tiny_mc" in out and "acc_norm" in out and "|" in out  # lm-eval's markdown table
    results = json.loads(report.read_text())["lm_eval"]
    assert set(results) == {"tiny_mc", "tiny_ppl"}
    assert 0 <= results["tiny_mc"]["acc,none"] <= 1
    assert results["tiny_ppl"]["bits_per_byte,none"] > 0


@pytest.mark.slow
def test_the_harness_command_line_runs_our_model(run, tasks, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [
        "lm_eval", "--model", "gpt2_jax", "--model_args", f"workdir={run / 'run'}",
        "--tasks", "tiny_gen", "--include_path", str(tasks), "--limit", "1"])
    lm_eval_command.main()
    assert "tiny_gen" in capsys.readouterr().out


def test_without_the_extra_evaluate_says_what_to_install(run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--workdir", str(run / "run"), "--lm_eval", "hellaswag"])
    assert exit_.value.code == ('error: --lm_eval needs lm_eval (the lmeval extra): '
                                'pip install -e ".[lmeval]"')


@pytest.mark.slow
def test_an_unknown_task_is_named_before_the_run_is_restored(tasks, tmp_path):
    with pytest.raises(SystemExit) as exit_:  # no run there: the task is checked first
        evaluate.main(["--workdir", str(tmp_path / "nothing"), "--lm_eval", "tiny_mc,tiny_nope",
                       "--lm_eval_include", str(tasks)])
    assert exit_.value.code.startswith("error: --lm_eval: no task named tiny_nope among")


def test_unsupported_generation_settings_are_named(run):
    from gpt2_jax.errors import UserError

    model = lm_eval_adapter.GPT2JaxLM(workdir=str(run / "run"))
    with pytest.raises(UserError, match="num_beams"):
        model._sampling({"until": ["."], "num_beams": 4}, seed=0)
    with pytest.raises(UserError, match="max_gen_toks=64"):
        model._sampling({"max_gen_toks": CONTEXT}, seed=0)



def test_a_limit_that_is_not_positive_is_refused_before_the_run_is_restored(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--workdir", str(tmp_path / "nothing"), "--lm_eval", "tiny_mc",
                       "--limit", "0"])
    assert exit_.value.code == "error: --limit must be > 0 (a count, or a fraction below 1), not 0.0"
