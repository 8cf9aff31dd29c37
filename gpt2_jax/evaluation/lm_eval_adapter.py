"""EleutherAI's lm-evaluation-harness (lm_eval) over a trained run, registered as its model
`gpt2_jax`.

The harness asks a model three things. Each is answered by the project's own machinery, with the
context handling of the harness's Hugging Face model for GPT-2, so both give the same numbers on
the same weights:
- `loglikelihood`: (context, continuation) pairs tokenized as the harness does (trailing spaces
  of the context join the continuation; an empty context is <|endoftext|>), kept to their last
  block_size + 1 tokens, scored by the batched scorer (gpt2_jax.evaluation.scoring).
- `loglikelihood_rolling`: each document cut into the harness's disjoint windows of block_size
  tokens (<|endoftext|> before the first), every window of every document in one scorer pass.
- `generate_until`: prompts left-truncated to leave room for `max_gen_toks`, decoded together
  through the inference engine's slots, each ended at its `until` strings or <|endoftext|>.

The harness finds models only in its own registry and has no plug-in entry point, so its command
sees this one through `python -m gpt2_jax.lm_eval`; `python -m gpt2_jax.evaluate --lm_eval TASKS`
runs it in-process on a run already restored.
"""

from __future__ import annotations

import jax
# The harness's own models first: its registry loads them only while it is empty.
import lm_eval.models  # noqa: F401
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from gpt2_jax import tokenizer
from gpt2_jax.errors import EvalDataError, UserError
from gpt2_jax.evaluation import scoring
from gpt2_jax.inference import Engine, SamplingParams
from gpt2_jax.training.checkpoint import Trained, load_trained

EOT_TEXT = "<|endoftext|>"
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")


@register_model("gpt2_jax")
class GPT2JaxLM(TemplateLM):
    """A trained run as a harness model: `workdir` (and `step`, default the newest) from
    `--model_args`, or a run already restored (`trained`). `max_batch` is the engine's slots
    for generation, `batch_tokens` the scorer's tokens per device per batch. The `batch_size`,
    `max_batch_size` and `device` the harness hands every model are not used: the scorer
    batches by tokens, and the devices are jax's."""

    def __init__(self, workdir: str | None = None, step: int | None = None,
                 trained: Trained | None = None, max_batch: int = 32, batch_tokens: int = 2**15,
                 batch_size=None, max_batch_size=None, device=None):
        super().__init__()
        del batch_size, max_batch_size, device  # see the docstring
        if trained is None:
            if workdir is None:
                raise UserError("the gpt2_jax model needs workdir=DIR in --model_args")
            trained = load_trained(workdir, step)
        self.trained, self.max_batch, self.batch_tokens = trained, max_batch, batch_tokens
        self._engine: Engine | None = None

    @property
    def eot_token_id(self) -> int:
        return tokenizer.EOT_TOKEN

    @property
    def max_length(self) -> int:
        return self.trained.model.config.block_size

    @property
    def max_gen_toks(self) -> int:
        return 256  # the harness's default, as its Hugging Face model has it

    def tok_encode(self, string: str, **kwargs) -> list[int]:
        return tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return tokenizer.decode(tokens)

    # -- log-likelihoods ------------------------------------------------------------------------
    def _scores(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-likelihood, greedy) of each (context, continuation) token pair; a pair longer
        than the block loses its oldest context."""
        rows = [scoring.cropped(context + continuation, len(context),
                                len(context) + len(continuation), self.max_length + 1)
                for context, continuation in pairs]
        t = self.trained
        with jax.set_mesh(t.mesh):
            scores = scoring.score_rows(t.model, t.params, rows, t.mesh, self.batch_tokens,
                                        desc="lm-eval")
        return [(-float(s), bool(g)) for s, g in zip(scores.summed, scores.greedy)]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False
                              ) -> list[tuple[float, bool]]:
        answers = self._scores([(context, continuation) for _, context, continuation in requests])
        for (request, _, _), answer in zip(requests, answers):
            self.cache_hook.add_partial("loglikelihood", request, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            for window in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1):
                windows.append(lm_utils.make_disjoint_window(window))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (loglikelihood, _) in zip(owners, self._scores(windows)):
            totals[owner] += loglikelihood
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # -- generation -----------------------------------------------------------------------------
    def _sampling(self, gen_kwargs: dict, seed: int) -> SamplingParams:
        """The engine's settings for one request's generation kwargs (greedy unless it samples)."""
        unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
        if unknown:
            raise UserError(f"generation kwargs {', '.join(unknown)}: not supported by the "
                            f"gpt2_jax model (it takes {', '.join(GEN_KWARGS)})")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_tokens = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        if not 0 < max_tokens < self.max_length:
            raise UserError(f"generation kwargs max_gen_toks={max_tokens}: must be at least 1 and "
                            f"leave room for a prompt in the model's context of {self.max_length}")
        greedy = gen_kwargs.get("do_sample") is False
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if greedy else float(gen_kwargs.get("temperature", 0.0)),
            top_k=int(gen_kwargs.get("top_k", 0)), top_p=float(gen_kwargs.get("top_p", 1.0)),
            seed=seed, stop=tuple(dict.fromkeys(s for s in [*until, EOT_TEXT] if s)))

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prompts, settings = [], []
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            params = self._sampling(gen_kwargs, seed=i)
            prompts.append(self.tok_encode(context)[-(self.max_length - params.max_tokens):]
                           or [tokenizer.EOT_TOKEN])
            settings.append(params)
        if self._engine is None:
            self._engine = Engine(self.trained.model.config, self.trained.params,
                                  max_batch=self.max_batch)
        texts = [r.text for r in self._engine.generate(prompts, settings)]
        for request, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return texts


def task_manager(tasks: list[str], include_path: str | None = None):
    """lm-eval's TaskManager over its tasks and those under `include_path`, once every name in
    `tasks` (a task, a group, or a pattern) is known to it: checked before any model is
    restored."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    found = set(manager.match_tasks(tasks))
    unknown = [t for t in tasks if t not in found and not any(c in t for c in "*?[")]
    if unknown:
        raise EvalDataError(f"--lm_eval: no task named {', '.join(unknown)} among lm-eval's "
                            + (f"and {include_path}'s " if include_path else "")
                            + "(`lm_eval ls tasks` lists them; --lm_eval_include DIR adds task "
                              "YAMLs)")
    return manager


def evaluate(trained: Trained, tasks: list[str], manager, limit: float | None = None) -> dict:
    """lm-eval's results of `tasks` (see task_manager), as `lm_eval.simple_evaluate` returns
    them."""
    from lm_eval import simple_evaluate

    return simple_evaluate(model=GPT2JaxLM(trained=trained), tasks=tasks, limit=limit,
                           task_manager=manager, log_samples=False)
