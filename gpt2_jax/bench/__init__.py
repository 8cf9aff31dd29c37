"""`python -m gpt2_jax.bench`: throughput of the training step and loop, and the trace reader it uses."""
