"""gpt2_jax: reproduce GPT-2 from scratch with JAX/Flax, the way llm.c does."""
