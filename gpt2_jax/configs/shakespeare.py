"""The default run: a small GPT-2 on the Tiny Shakespeare text the package ships (CPU, minutes).

    python -m gpt2_jax.train            # same as --config gpt2_jax/configs/shakespeare.py
"""

from gpt2_jax.config import base_config


def get_config():
    c = base_config()
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.n_embd = 128
    c.model.block_size = 256
    c.train.max_steps = 200
    c.train.micro_batch_size = 8
    c.train.seq_len = 128
    c.train.total_batch_size = 8 * 128  # one micro-batch per step on one device
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.eval_steps = 4
    c.train.checkpoint_every = 100
    c.train.keep_checkpoint_every = 0
    c.train.health_every = 100
    c.stability.window = 32
    c.train.sample_tokens = 96
    c.optim.lr = 1e-3  # small models take a larger step than GPT-2's 6e-4
    c.optim.warmup_steps = 20
    c.optim.final_lr_frac = 0.1
    c.data.source = "shakespeare"
    c.data.num_threads = 2
    return c
