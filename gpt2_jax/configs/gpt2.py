"""GPT-2 at its four sizes with llm.c's settings, and the modern recipe on top of it: the
definitions the files under configs/ return, importable so that one config can build on another.

    from gpt2_jax.configs.gpt2 import gpt2, modern
    c = gpt2("350m")
"""

from __future__ import annotations

import ml_collections

from gpt2_jax.config import base_config
from gpt2_jax.errors import ConfigError

# llm.c's scripts/run_gpt2_<size>.sh, size by size: the model's shape, the run's length, batch
# and learning rate, and its data (data/<dir>/<prefix>_{train,val}_*.bin).
SIZES = {
    "124m": dict(n_layer=12, n_head=12, n_embd=768, max_steps=19073, micro_batch_size=64,
                 total_batch_size=524288, lr=6e-4, final_lr_frac=0.0,
                 data="fineweb10B/fineweb", logits_dtype="bfloat16"),
    "350m": dict(n_layer=24, n_head=16, n_embd=1024, max_steps=60000, micro_batch_size=64,
                 total_batch_size=524288, lr=3e-4, final_lr_frac=0.0,
                 data="fineweb100B/fineweb", logits_dtype="float32"),
    "774m": dict(n_layer=36, n_head=20, n_embd=1280, max_steps=286102, micro_batch_size=32,
                 total_batch_size=524288, lr=2.5e-4, final_lr_frac=0.0,
                 data="fineweb100B/fineweb", logits_dtype="float32"),
    "1558m": dict(n_layer=48, n_head=25, n_embd=1600, max_steps=32000, micro_batch_size=16,
                  total_batch_size=1048576, lr=6e-4, final_lr_frac=0.1,
                  data="edu_fineweb100B/edu_fineweb", logits_dtype="bfloat16"),
}


def gpt2(size: str) -> ml_collections.ConfigDict:
    """GPT-2 `size` ("124m", "350m", "774m" or "1558m") as llm.c trains it.

    Every size stores all activations (model.remat=none: it fits an 80 GB GPU at these micro
    batches; remat=dots_with_no_batch_dims_saveable or full trade speed for memory) and keeps
    bf16 matmuls (model.fp8=True switches the blocks to FP8 on Hopper GPUs; off, as in llm.c).
    """
    if size not in SIZES:
        raise ConfigError(f"GPT-2 size {size!r}: one of {', '.join(SIZES)}")
    s = SIZES[size]
    c = base_config()
    c.model.n_layer, c.model.n_head, c.model.n_embd = s["n_layer"], s["n_head"], s["n_embd"]
    # The layer loop fully unrolled: the fastest on GPUs; compile time grows with n_layer.
    c.model.scan_unroll = s["n_layer"]
    # The loss's logits stored in bfloat16 at 124M and 1558M (the softmax stays fp32), as llm.c's
    # classifier stores them.
    c.model.logits_dtype = s["logits_dtype"]
    c.train.max_steps = s["max_steps"]
    c.train.micro_batch_size = s["micro_batch_size"]  # llm.c's -b
    c.train.total_batch_size = s["total_batch_size"]  # llm.c's -d
    c.optim.lr, c.optim.warmup_steps, c.optim.final_lr_frac = s["lr"], 700, s["final_lr_frac"]
    c.train.hellaswag_every = 250  # with every val-loss eval, as llm.c -h 1
    c.data.train_files = f"data/{s['data']}_train_*.bin"
    c.data.val_files = f"data/{s['data']}_val_*.bin"
    return c


def modern(size: str) -> ml_collections.ConfigDict:
    """gpt2(size) with the modern recipe: RoPE, RMSNorm, QK-norm, ReLU^2, an untied
    zero-initialized head, a logit softcap, and Muon on the blocks' matrices.

    From modded-nanogpt's record records/110624_ShortcutsTweaks (github.com/KellerJordan/
    modded-nanogpt): Muon lr 0.02 with Nesterov momentum 0.95 on the blocks, Adam lr 0.3 on the
    token embedding and 0.002 on the zero-initialized head (base_config's optim.*_lr), betas
    (0.9, 0.95), no weight decay, no warmup, 3,200 steps. Where we differ: our lr decays by
    cosine (theirs is constant, then a linear warmdown); our blocks keep GPT-2's heads and its
    biases and norm gains (Adam at optim.scalar_lr); the softcap of 30 is from their later
    records. The record is at 124M; other sizes take its schedule as it is.
    """
    c = gpt2(size)
    c.model.pos_emb = "rope"
    c.model.norm = "rmsnorm"
    c.model.qk_norm = True
    c.model.mlp_act = "relu2"
    c.model.tie_embeddings = False
    c.model.logit_softcap = 30.0
    c.optim.name = "muon"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0  # (AdamW only; Muon's groups use none)
    c.optim.grad_clip = 0.0
    c.train.max_steps = 3200  # the record's steps (at 124M: 1.68B tokens at 524,288 per step)
    return c
