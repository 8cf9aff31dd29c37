"""GPT-2 in flax.linen, read top to bottom like nanoGPT's model.py.

`GPT(config).init(rng, tokens)` gives a params pytree and `GPT(config).apply(params, tokens)` is a
pure function of it. Every parameter and the residual stream carry *logical* axis names ("embed",
"mlp", "heads", "vocab", "batch", ...); `sharding.py` maps them onto the device mesh, so the model
says nothing about parallelism. Shapes are in the names: B batch, T time, D channels, H heads,
K head size, F MLP width, V vocabulary, N tokens, C tokens in a loss chunk.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax.errors import ConfigError
from gpt2_jax.model.loss import cross_entropy, lm_head_logits
from gpt2_jax.ops import kernels, norm_kernel
from gpt2_jax.ops.gelu_kernel import bias_gelu
from gpt2_jax.ops.fp8 import matmul as fp8_matmul

# Names of `model.remat`: "none" stores every activation, "full" recomputes the whole block in the
# backward pass, anything else is a policy of `jax.checkpoint_policies` (what may be saved).
REMAT_CHOICES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                 "checkpoint_dots", "checkpoint_dots_with_no_batch_dims", "nothing_saveable")


def _one_of(default: str, *choices: str) -> Any:
    """A field that takes one of `choices`. Where "auto" is one, a run config starts from it and
    config.model_config resolves it for the backend and mesh; a GPTConfig built directly starts
    from `default`, a value the model runs as is."""
    return dataclasses.field(default=default, metadata={"choices": choices})


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """The model's static config, and the schema of a run config's `model` section: every field
    but real_vocab_size is the key model.<field> (config.base_config is built from these)."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64 for fast matmuls
    # Ids the tokenizer makes (not a config key): the padding rows never win or score.
    real_vocab_size: int = dataclasses.field(default=50257, metadata={"config": False})
    block_size: int = 1024  # longest sequence (learned position embeddings)
    # Compute dtype (parameters are always float32); auto: bfloat16 on GPU/TPU, float32 on CPU.
    dtype: str = _one_of("float32", "auto", "bfloat16", "float32")
    # jax.nn.dot_product_attention's implementation; auto: cudnn on GPU with bfloat16, else xla.
    attention: str = _one_of("xla", "auto", "cudnn", "xla")
    remat: str = _one_of("none", *REMAT_CHOICES)  # activation recomputation (REMAT_CHOICES)
    # Storage of the loss's logits; the softmax is always fp32.
    logits_dtype: str = _one_of("float32", "float32", "bfloat16")
    # Pallas kernels (ops/kernels.py says which model each computes for, and where auto takes it):
    # the loss after the LM head, llm.c's fused classifier (ops/loss_kernel.py; no softcap, and
    # each device needs whole rows of logits, so no tensor parallelism);
    loss_kernel: str = _one_of("xla", *kernels.CHOICES)
    # the MLP's bias add and GELU, forward and backward (ops/gelu_kernel.py);
    gelu_kernel: str = _one_of("xla", *kernels.CHOICES)
    # the residual and bias adds and the LayerNorm after them (ops/norm_kernel.py).
    norm_kernel: str = _one_of("xla", *kernels.CHOICES)
    scan_unroll: int = 1  # layers per iteration of the compiled layer loop (n_layer = unrolled)
    fp8: bool = False  # the blocks' four projections as FP8 matmuls (ops/fp8.py); Hopper+ GPUs
    # The modern recipe's switches (configs/modern_124m.py); the defaults are exact GPT-2.
    pos_emb: str = _one_of("learned", "learned", "rope")  # rope: rotary q and k, no wpe
    norm: str = _one_of("layernorm", "layernorm", "rmsnorm")
    qk_norm: bool = False  # RMS-normalize q and k per head before attention
    mlp_act: str = _one_of("gelu_tanh", "gelu_tanh", "relu2")  # relu2: squared ReLU
    tie_embeddings: bool = True  # False: a separate, zero-initialized lm_head
    logit_softcap: float = 0.0  # > 0: logits = c * tanh(logits / c) (0 = off)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def check(self) -> None:
        """Reject a model that cannot run, naming its model.<key>s. "auto" choices pass: a run
        config's model section is checked this way before they are resolved."""
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        require(self.n_layer > 0 and self.n_head > 0 and self.n_embd > 0,
                "model.n_layer, model.n_head and model.n_embd must be positive")
        require(self.n_embd % self.n_head == 0,
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        require(self.vocab_size >= self.real_vocab_size,
                f"model.vocab_size ({self.vocab_size}) must be at least GPT-2's "
                f"{self.real_vocab_size}")
        for field in dataclasses.fields(self):
            choices, value = field.metadata.get("choices", ()), getattr(self, field.name)
            if choices and value not in choices:
                raise ConfigError(f"model.{field.name} must be {', '.join(choices[:-1])} or "
                                  f"{choices[-1]}, not {value!r}")
        require(1 <= self.scan_unroll <= self.n_layer,
                f"model.scan_unroll ({self.scan_unroll}) must be in 1..model.n_layer "
                f"({self.n_layer})")
        require(self.pos_emb != "rope" or self.head_dim % 2 == 0,
                f"model.pos_emb=rope needs an even head size, not {self.head_dim} "
                "(model.n_embd / model.n_head)")
        require(self.logit_softcap >= 0,
                f"model.logit_softcap ({self.logit_softcap}) must be >= 0 (0 = off)")
        kernels.check(self)


def _normal(std: float, axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _const(init, axes: tuple):
    return nn.with_logical_partitioning(init, axes)


class ResidualNorm(nn.Module):
    """Adds a branch's output and its bias, (y, bias) as Projection(defer_bias=True) returns them,
    to the residual stream and normalizes the sum for the next branch: (s, norm(s)) for
    s = x + (y + bias). GPT-2's LayerNorm (or RMSNorm: a gain, no bias) over the channels with
    fp32 statistics; with norm_kernel=pallas the adds and the LayerNorm run as one Pallas kernel
    each way (ops/norm_kernel.py), as llm.c fuses them."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, branch: tuple[jax.Array, jax.Array]
                 ) -> tuple[jax.Array, jax.Array]:
        cfg, width = self.config, x_BxTxD.shape[-1]
        branch_BxTxD, branch_bias_D = branch
        scale = self.param("scale", _const(nn.initializers.ones, ("embed",)), (width,),
                           jnp.float32)
        bias = None if cfg.norm == "rmsnorm" else self.param(
            "bias", _const(nn.initializers.zeros, ("embed",)), (width,), jnp.float32)
        if kernels.runs_pallas(cfg, "norm_kernel"):
            return norm_kernel.add_layer_norm(x_BxTxD, branch_BxTxD, branch_bias_D, scale, bias)
        x_BxTxD = x_BxTxD + (branch_BxTxD + branch_bias_D.astype(branch_BxTxD.dtype))
        return x_BxTxD, normalize(x_BxTxD, scale, bias, cfg.dtype)


def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array | None, dtype) -> jax.Array:
    """LayerNorm over the last axis with fp32 statistics (RMSNorm when `bias` is None), in
    `dtype`: ResidualNorm's math, shared with the inference engine's forward."""
    x32 = x.astype(jnp.float32)
    if bias is None:  # RMSNorm
        rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + norm_kernel.EPS)
        return (x32 * rstd * scale).astype(dtype)
    # One pass for both moments, as flax's LayerNorm (use_fast_variance) lets XLA fuse them.
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) - jnp.square(mean), 0.0)
    return ((x32 - mean) * (jax.lax.rsqrt(var + norm_kernel.EPS) * scale) + bias).astype(dtype)


def rms_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / rms(x) over the last axis, in fp32 (no gain: QK-norm's normalization)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
            ).astype(x.dtype)


def rotary(x_BxTxHxK: jax.Array, positions_T: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding: each pair (x[i], x[i + K/2]) of a head turned by the angle
    position * base^(-2i/K) (RoFormer, in the half-split layout of GPT-NeoX and Llama)."""
    half = x_BxTxHxK.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_TxK2 = positions_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
    cos, sin = (f(angles_TxK2)[None, :, None, :] for f in (jnp.cos, jnp.sin))
    x1, x2 = (part.astype(jnp.float32) for part in (x_BxTxHxK[..., :half], x_BxTxHxK[..., half:]))
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1
                           ).astype(x_BxTxHxK.dtype)


def _residual_std(cfg: GPTConfig) -> float:
    # GPT-2's init: projections that write into the residual stream are scaled by 1/sqrt(2L),
    # since every layer adds two of them (attention and MLP).
    return 0.02 / math.sqrt(2 * cfg.n_layer)


class Projection(nn.Module):
    """x @ kernel + bias, contracting x's last `n_in` axes (with `gelu`, GELU of that through
    ops/gelu_kernel.py, whose backward is one kernel that also reduces the bias gradient). With
    `defer_bias` it returns (x @ kernel, bias) for ResidualNorm to add with the residual.

    The kernel is created at its full rank, e.g. (D, 3, H, K), so its logical axis names (and so
    its sharding) can split heads; the output is in the compute dtype. With `fp8` the product is
    an FP8 matmul of x and the kernel flattened to 2-D (ops/fp8.py).
    """

    out_shape: tuple[int, ...]
    kernel_axes: tuple
    std: float
    dtype: str
    n_in: int = 1
    fp8: bool = False
    gelu: bool = False
    defer_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        in_shape = x.shape[-self.n_in:]
        kernel = self.param("kernel", _normal(self.std, self.kernel_axes),
                            in_shape + self.out_shape, jnp.float32)
        bias = self.param("bias", _const(nn.initializers.zeros, self.kernel_axes[self.n_in:]),
                          self.out_shape, jnp.float32)
        if self.fp8:
            n_in, n_out = math.prod(in_shape), math.prod(self.out_shape)
            y = fp8_matmul(x.reshape(-1, n_in), kernel.reshape(n_in, n_out), jnp.dtype(self.dtype))
            y = y.reshape(x.shape[:-self.n_in] + self.out_shape)
        else:
            y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.n_in)
        if self.gelu:
            return bias_gelu(y, bias)
        if self.defer_bias:
            return y, bias
        return y + bias.astype(self.dtype)


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, positions_T: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
        """The output projection's product and its bias, (y, bias), for ResidualNorm to add."""
        cfg = self.config
        # q, k and v in one matmul; the kernel keeps heads as an axis so tensor parallelism can
        # split heads without resharding (llm.c's c_attn is this kernel reshaped to (D, 3D)).
        qkv_BxTx3xHxK = Projection((3, cfg.n_head, cfg.head_dim), ("embed", None, "heads", "kv"),
                                   0.02, cfg.dtype, fp8=cfg.fp8, name="c_attn")(x_BxTxD)
        qkv_BxTx3xHxK = nn.with_logical_constraint(
            qkv_BxTx3xHxK, ("batch", "length", None, "heads", "kv"))
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
        if cfg.qk_norm:
            q_BxTxHxK, k_BxTxHxK = rms_normalize(q_BxTxHxK), rms_normalize(k_BxTxHxK)
        if cfg.pos_emb == "rope":
            q_BxTxHxK = rotary(q_BxTxHxK, positions_T)
            k_BxTxHxK = rotary(k_BxTxHxK, positions_T)
        y_BxTxHxK = jax.nn.dot_product_attention(
            q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True, implementation=cfg.attention)
        return Projection((cfg.n_embd,), ("heads", "kv", "embed"), _residual_std(cfg), cfg.dtype,
                          n_in=2, fp8=cfg.fp8, defer_bias=True, name="c_proj")(y_BxTxHxK)


class MLP(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The output projection's product and its bias, (y, bias), for ResidualNorm to add."""
        cfg = self.config
        fused_gelu = kernels.runs_pallas(cfg, "gelu_kernel")
        h_BxTxF = Projection((4 * cfg.n_embd,), ("embed", "mlp"), 0.02, cfg.dtype, fp8=cfg.fp8,
                             gelu=fused_gelu, name="c_fc")(x_BxTxD)
        h_BxTxF = nn.with_logical_constraint(h_BxTxF, ("batch", "length", "mlp"))
        if cfg.mlp_act == "relu2":
            h_BxTxF = jnp.square(nn.relu(h_BxTxF))
        elif not fused_gelu:
            h_BxTxF = nn.gelu(h_BxTxF, approximate=True)  # GPT-2's tanh approximation
        return Projection((cfg.n_embd,), ("mlp", "embed"), _residual_std(cfg), cfg.dtype,
                          fp8=cfg.fp8, defer_bias=True, name="c_proj")(h_BxTxF)


Branch = tuple[jax.Array, jax.Array]  # a branch's output and its bias, not yet added


class Block(nn.Module):
    """Pre-norm transformer block. The carry is the residual stream and the previous branch's
    output and bias, not yet added to it: each add happens in the ResidualNorm that normalizes
    the sum, so the three can be one kernel. The (carry, None) signature is what nn.scan wants
    (the positions are broadcast to every layer, for rotary embeddings)."""

    config: GPTConfig

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, Branch], positions_T: jax.Array
                 ) -> tuple[tuple[jax.Array, Branch], None]:
        x_BxTxD, branch = carry
        x_BxTxD, h_BxTxD = ResidualNorm(self.config, name="ln_1")(x_BxTxD, branch)
        branch = CausalSelfAttention(self.config, name="attn")(h_BxTxD, positions_T)
        x_BxTxD, h_BxTxD = ResidualNorm(self.config, name="ln_2")(x_BxTxD, branch)
        (mlp_BxTxD, mlp_bias_D) = MLP(self.config, name="mlp")(h_BxTxD)
        # Recorded only when "intermediates" is mutable (health.py); otherwise XLA drops it.
        self.sow("intermediates", "residual_rms", jnp.sqrt(jnp.mean(jnp.square(
            x_BxTxD.astype(jnp.float32) + mlp_BxTxD.astype(jnp.float32) + mlp_bias_D))))
        x_BxTxD, mlp_BxTxD = (nn.with_logical_constraint(a, ("batch", "length", "embed"))
                              for a in (x_BxTxD, mlp_BxTxD))
        return (x_BxTxD, (mlp_BxTxD, mlp_bias_D)), None


def _remat(block: type[nn.Module], policy_name: str, scan_unroll: int) -> type[nn.Module]:
    """The block under a recomputation policy (what the backward pass may read instead of
    recomputing). With more than one layer per loop iteration (the GPU configs unroll fully) the
    recomputation must be kept apart from the forward pass by prevent_cse, as MaxText does for
    unscanned layers: without it XLA merges the two copies and keeps every activation, so a
    policy saves no memory."""
    if policy_name == "none":
        return block
    policy = None if policy_name == "full" else getattr(jax.checkpoint_policies, policy_name)
    # A rolled scan already stops CSE across layers, and there prevent_cse=False is faster.
    return nn.remat(block, policy=policy, prevent_cse=scan_unroll > 1)


def embed(table_VxD: jax.Array, ids: jax.Array, dtype, vocab_axis: str | None) -> jax.Array:
    """Rows `ids` of an fp32 embedding table, cast to the compute dtype after the gather.

    The lookup reads the whole table width (`vocab_axis`, None): under FSDP the table is gathered
    first, so the backward scatters this device's tokens into a full-width gradient that is then
    reduce-scattered, like every other weight's. Left to propagation, each device gathered the
    whole global batch and scattered it into its half of the columns, with activation-sized
    transposes around it.

    The backward of a gather is a scatter-add of one row per token into a table-sized gradient.
    Gathering from a bf16 copy of the table (what nn.Embed does) makes it a bf16 scatter-add;
    real text repeats a few tokens thousands of times per batch, and on GPUs that colliding
    bf16 scatter serializes, hundreds of times slower than in fp32 (benchmarks/
    embedding_backward.py times it). Gathering in fp32 also sums
    a frequent token's thousands of rows in fp32 rather than bf16.
    """
    table_VxD = nn.with_logical_constraint(table_VxD, (vocab_axis, None))
    return jnp.take(table_VxD, ids, axis=0).astype(dtype)



class GPT(nn.Module):
    """The training model. Decoding runs the same params through gpt2_jax/inference (a KV cache
    and per-row positions), with this module's pieces."""

    config: GPTConfig

    def setup(self):
        cfg = self.config
        self.wte = nn.Embed(cfg.vocab_size, cfg.n_embd, dtype=cfg.dtype, param_dtype=jnp.float32,
                            embedding_init=_normal(0.02, ("vocab", "embed")))
        if cfg.pos_emb == "learned":
            self.wpe = nn.Embed(cfg.block_size, cfg.n_embd, dtype=cfg.dtype,
                                param_dtype=jnp.float32,
                                embedding_init=_normal(0.02, (None, "embed")))
        if not cfg.tie_embeddings:  # zero-initialized, as modded-nanogpt's untied head
            self.lm_head = self.param("lm_head", _const(nn.initializers.zeros, ("vocab", "embed")),
                                      (cfg.vocab_size, cfg.n_embd), jnp.float32)
        # The blocks' params stacked on a "layers" axis, run by a scan: with scan_unroll=1 one
        # compiled block serves every layer (48 compile like 1); unrolling trades compile time for
        # speed (the GPU configs unroll fully).
        self.h = nn.scan(
            _remat(Block, cfg.remat, cfg.scan_unroll),
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True}, in_axes=nn.broadcast, length=cfg.n_layer,
            unroll=cfg.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg)
        self.ln_f = ResidualNorm(cfg)

    def hidden_states(self, tokens_BxT: jax.Array) -> jax.Array:
        """Final-norm output, (B, T, D) in the compute dtype."""
        _, T = tokens_BxT.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size "
                             f"{self.config.block_size}")
        positions_T = jnp.arange(T)
        x_BxTxD = embed(self.wte.embedding, tokens_BxT, self.config.dtype, "vocab")
        # The position embeddings are the first "branch": the first norm adds them.
        if self.config.pos_emb == "learned":
            pos_BxTxD = jnp.broadcast_to(
                embed(self.wpe.embedding, positions_T, self.config.dtype, None), x_BxTxD.shape)
        else:
            pos_BxTxD = jnp.zeros_like(x_BxTxD)
        x_BxTxD, pos_BxTxD = (nn.with_logical_constraint(a, ("batch", "length", "embed"))
                              for a in (x_BxTxD, pos_BxTxD))
        no_bias_D = jnp.zeros((self.config.n_embd,), jnp.float32)
        x_BxTxD, branch = self.h((x_BxTxD, (pos_BxTxD, no_bias_D)), positions_T)[0]
        return self.ln_f(x_BxTxD, branch)[1]

    def head_table(self) -> jax.Array:
        """The LM head's (V, D) weights: the token embedding when tied."""
        return self.wte.embedding if self.config.tie_embeddings else self.lm_head

    def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
        """Next-token logits, (B, T, V) float32, padded vocabulary at -inf."""
        h_BxTxD = self.hidden_states(tokens_BxT)
        return lm_head_logits(h_BxTxD, self.head_table(),
                              real_vocab_size=self.config.real_vocab_size,
                              softcap=self.config.logit_softcap)

    def loss(self, tokens_BxT: jax.Array, targets_BxT: jax.Array,
             chunk_size: int = 0) -> jax.Array:
        """Mean cross-entropy of predicting `targets_BxT`; see `cross_entropy`."""
        cfg, h_BxTxD = self.config, self.hidden_states(tokens_BxT)
        kernel = "pallas" if kernels.runs_pallas(cfg, "loss_kernel") else "xla"
        return cross_entropy(h_BxTxD.reshape(-1, cfg.n_embd), self.head_table(),
                             targets_BxT.reshape(-1), cfg.real_vocab_size, chunk_size,
                             cfg.logits_dtype, cfg.logit_softcap, kernel)
