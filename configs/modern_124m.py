"""GPT-2 124M with the modern recipe: RoPE, RMSNorm, QK-norm, ReLU^2, an untied zero-initialized
head, a logit softcap, and Muon on the blocks' matrices.

    python -m gpt2_jax.train --config configs/modern_124m.py

Taken from modded-nanogpt's 2024-11-06 record (github.com/KellerJordan/modded-nanogpt,
records/110624_ShortcutsTweaks, whose log 4a71cc92 ends at FineWeb val loss 3.3274 after 3,200
steps of 524,288 tokens): Muon lr 0.02 with Nesterov momentum 0.95 on the blocks, Adam lr 0.3 on
the token embedding and 0.002 on the zero-initialized head, betas (0.9, 0.95), no weight decay,
no warmup, the same 3,200 steps. Where we differ: our lr decays by cosine (theirs is constant,
then a linear 914-step warmdown); our blocks keep GPT-2's 12 heads of 64 (theirs: 6 of 128) and
its biases and norm gains (Adam at optim.scalar_lr); the softcap of 30 is from their later records.

Measured on one H100 (BENCHMARKS.md, "Modern recipe"): on the same batches of real text at
65,536-token steps it reached gpt2_124m's validation loss after 80M tokens within 26M tokens,
at 7% fewer tokens/s than gpt2_124m at 524,288-token steps.
"""

import importlib.util
from pathlib import Path


def gpt2_124m():
    """configs/gpt2_124m.py's config (its data, batch and model size), loaded by path."""
    spec = importlib.util.spec_from_file_location("gpt2_124m",
                                                  Path(__file__).with_name("gpt2_124m.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = gpt2_124m()
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
    c.train.max_steps = 3200  # 1.68B tokens
    return c
