"""EleutherAI's `lm_eval` command with this project's model registered:
`python -m gpt2_jax.lm_eval --model gpt2_jax --model_args workdir=DIR[,step=N] --tasks ...`
takes every flag of `lm_eval`. The harness finds models only in its own registry and has no
plug-in entry point, so its own command cannot see `gpt2_jax`; this one imports the adapter
(gpt2_jax.evaluation.lm_eval_adapter) first, then runs the harness's command line.
"""

from __future__ import annotations

from gpt2_jax.errors import exits_on_user_error, require_extra


@exits_on_user_error
def main() -> None:
    require_extra("lm_eval", "lmeval", "python -m gpt2_jax.lm_eval")
    from gpt2_jax.evaluation import lm_eval_adapter  # noqa: F401  registers the model
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
