"""One train step over any mesh: (data, fsdp, tensor) meshes and two real processes give the
single-device result, with every parameter sharded as the rules table says.

Tolerance: float32 throughout; collectives and accumulation change only summation order, so losses
agree to rtol 1e-5 and params after 3 AdamW steps to atol 2e-6 (updates are ~1e-3 in size).
"""

import functools
import json
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from helpers import TINY, process_env, run_steps
from gpt2_jax.parallel import sharding
from gpt2_jax.config import load_config, model_config
from gpt2_jax.errors import ConfigError
from gpt2_jax.model import GPT, param_logical_specs
from gpt2_jax.training.optim import make_optimizer
from gpt2_jax.tokenizer import VOCAB_SIZE
from gpt2_jax.parallel.sharding import BatchLayout
from gpt2_jax.training.step import build_training

# 4 heads so that a 4-way tensor axis splits them; 16 sequences of 16 tokens per step.
SPMD = [*TINY, "--config.model.n_head=4", "--config.train.total_batch_size=256",
        "--config.train.max_steps=3"]
GLOBAL_BATCHES = [np.random.default_rng(s).integers(0, VOCAB_SIZE, (16, 17)).astype(np.int32)
                  for s in range(3)]


def train_on(mesh_shape, zero1=False, extra=()):
    data, fsdp, tensor = mesh_shape
    c = load_config(None, [*SPMD, f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}",
                           f"--config.mesh.tensor={tensor}", f"--config.mesh.zero1={zero1}",
                           *extra])
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:data * fsdp * tensor])
    accum = BatchLayout.from_config(c, mesh).accum_steps
    batches = [b.reshape(accum, 16 // accum, 17) for b in GLOBAL_BATCHES]
    return run_steps(c, mesh, make_optimizer(c.optim, 3), batches)


@pytest.fixture(scope="module")
def single_device():
    return train_on((1, 1, 1))


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)])
@pytest.mark.slow
def test_mesh_matches_single_device_and_shards_params_by_the_rules(mesh_shape, single_device):
    _, expected_params, expected_history = single_device
    state, params, history = train_on(mesh_shape)
    for got, want in zip(history, expected_history):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params, expected_params)

    specs = jax.tree.map(lambda x: x.sharding.spec, state.params)
    assert specs["wte"]["embedding"] == P("tensor", "fsdp")
    assert specs["h"]["mlp"]["c_fc"]["kernel"] == P(None, "fsdp", "tensor")
    assert specs["h"]["mlp"]["c_proj"]["kernel"] == P(None, "tensor", "fsdp")
    assert specs["h"]["attn"]["c_attn"]["kernel"] == P(None, "fsdp", None, "tensor", None)
    assert specs["h"]["ln_1"]["scale"] == P(None, "fsdp")
    kernel = state.params["h"]["mlp"]["c_fc"]["kernel"]
    _, fsdp, tensor = mesh_shape
    assert kernel.addressable_shards[0].data.shape == (2, 32 // fsdp, 128 // tensor)
    mu = state.opt_state[1][0].mu  # AdamW moments sit where their params sit
    assert mu["h"]["mlp"]["c_fc"]["kernel"].sharding == kernel.sharding


# Muon at modest lrs: its Newton-Schulz runs on the sharded matrices (XLA adds the collectives).
MUON = ["--config.optim.name=muon", "--config.optim.warmup_steps=0", "--config.optim.muon_lr=0.02",
        "--config.optim.embed_lr=0.01", "--config.optim.scalar_lr=0.01"]


@pytest.fixture(scope="module")
def single_device_muon():
    return train_on((1, 1, 1), extra=MUON)


# Meshes that split the matrices Newton-Schulz runs on (a data-only mesh replicates them, and its
# gradient path is AdamW's above).
@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2)])
@pytest.mark.slow
def test_muon_on_a_mesh_gives_the_single_device_update(mesh_shape, single_device_muon):
    """Newton-Schulz amplifies round-off more than AdamW: after 3 steps the params differ from
    one device's by up to ~1e-4 of their norm, with XLA's CPU code at -O1 or -O2 alike (measured).
    Tolerance 2e-4 of the norm; the updates are ~1e-2 of it, so a wrong split shows ~50x over."""
    _, expected_params, expected_history = single_device_muon
    state, params, history = train_on(mesh_shape, extra=MUON)
    for got, want in zip(history, expected_history):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected_params)):
        assert np.linalg.norm(got - want) <= 2e-4 * np.linalg.norm(want)
    kernel = state.params["h"]["mlp"]["c_fc"]["kernel"]
    muon_state = state.opt_state[1].inner_states["muon"].inner_state[0]
    assert muon_state.mu["h"]["mlp"]["c_fc"]["kernel"].sharding == kernel.sharding


@pytest.mark.parametrize("mesh_shape, mu_spec, mu_shard", [
    # 2 layers over 8 devices do not split evenly: the moments split along "embed".
    ((8, 1, 1), P(None, ("fsdp", "data"), "tensor"), (2, 32 // 8, 128)),
    # 2 layers over data=2: each device holds whole layers; "embed" still splits over fsdp.
    ((2, 4, 1), P("data", "fsdp", "tensor"), (1, 32 // 4, 128)),
])
@pytest.mark.slow
def test_zero1_shards_only_the_optimizer_state(mesh_shape, mu_spec, mu_shard, single_device):
    _, expected_params, expected_history = single_device
    state, params, history = train_on(mesh_shape, zero1=True)
    np.testing.assert_allclose(history[-1]["loss"], expected_history[-1]["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params, expected_params)
    kernel = state.params["h"]["mlp"]["c_fc"]["kernel"]
    mu = state.opt_state[1][0].mu["h"]["mlp"]["c_fc"]["kernel"]
    assert kernel.sharding.spec == P(None, "fsdp", "tensor")  # replicated over data
    assert mu.sharding.spec == mu_spec
    assert mu.addressable_shards[0].data.shape == mu_shard


FP8 = ["--config.model.fp8=True"]


@pytest.fixture(scope="module")
def single_device_fp8():
    return train_on((1, 1, 1), extra=FP8)


@pytest.mark.parametrize("mesh_shape, zero1", [((2, 4, 1), True), ((1, 2, 4), False)])
@pytest.mark.slow
def test_fp8_on_a_mesh_trains_like_one_device(mesh_shape, zero1, single_device_fp8):
    """FP8's per-tensor amax is taken over the whole (sharded) tensor, so every device quantizes
    with the single-device scale. A different summation order can still round a value near an
    e4m3/e5m2 boundary the other way, and AdamW turns that into a visible update of a few
    elements: after 3 steps ~4,000 of 4.9M params differ by more than 1e-5 with ZeRO-1, 6e-5 of
    the params' norm (measured). Tolerances: losses rtol 2e-5, all params 5e-4 of their norm."""
    _, expected_params, expected_history = single_device_fp8
    _, params, history = train_on(mesh_shape, zero1=zero1, extra=FP8)
    for got, want in zip(history, expected_history):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=2e-5)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    got, want = flat(params), flat(expected_params)
    assert np.linalg.norm(got - want) <= 5e-4 * np.linalg.norm(want)


@functools.cache  # several tests read the same program
def compiled_step_hlo(*flags) -> str:
    """The optimized HLO of the train step of SPMD + `flags` on 2 devices."""
    c = load_config(None, [*SPMD, *flags])
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:2])
    layout = BatchLayout.from_config(c, mesh)
    with jax.set_mesh(mesh):
        training = build_training(c, mesh)
        batch = jax.ShapeDtypeStruct((layout.accum_steps, layout.global_micro_batch, 17),
                                     np.int32, sharding=sharding.batch_sharding(mesh))
        return training.train_step.lower(training.abstract_state(), batch).compile().as_text()


@pytest.mark.slow
def test_embedding_gradients_scatter_local_tokens_into_the_whole_table():
    """ZeRO-1 and FSDP split the weights, not the batch's work: each device scatters its own
    tokens' embedding gradients into a whole (vocab, embed) table, as data parallelism does, and
    the split comes after (a reduce-scatter). Left to propagation, each device gathered the whole
    global batch and scattered it into half of the table (ZeRO-1's moments reached back into the
    backward; FSDP's table was split by columns), with activation-sized transposes around it."""
    def scatters(*mesh_flags):
        return sorted(re.findall(r"= f32\[([\d,]+)\]\S* scatter\(", compiled_step_hlo(*mesh_flags)))

    whole_tables = sorted(["50304,32", "32,32"])  # (vocab, embed) and (positions, embed)
    assert scatters("--config.mesh.data=2") == whole_tables
    assert scatters("--config.mesh.data=2", "--config.mesh.zero1=True") == whole_tables
    assert scatters("--config.mesh.data=1", "--config.mesh.fsdp=2") == whole_tables


@pytest.mark.slow
def test_zero1_gathers_the_params_once_per_step_not_per_micro_step():
    """ZeRO-1 all-gathers each updated parameter once, after the optimizer. Left to propagation,
    the gradient accumulator took the moments' split as the micro-step loop's carry, and every
    micro-step gathered it whole again (2 micro-steps: twice as many all-gathers as params)."""
    hlo = compiled_step_hlo("--config.mesh.data=2", "--config.mesh.zero1=True")  # 4 micro-steps
    n_params = len(jax.tree.leaves(param_logical_specs(GPT(model_config(load_config(None, SPMD))))))
    assert 0 < len(re.findall(r" all-gather(?:-start)?\(", hlo)) <= n_params


def loop_body_collectives(hlo: str) -> list[str]:
    """The collectives inside any while loop's body (the micro-step loop and the layer loops)."""
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    found, current = [], None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = header.group(1)
        elif current in bodies:
            found += re.findall(r" (all-reduce|reduce-scatter|all-gather)(?:-start)?\(", line)
    return found


@pytest.mark.parametrize("zero1", [False, True])
@pytest.mark.slow
def test_gradients_cross_the_data_axis_once_per_step_not_per_micro_step(zero1):
    """Over `data`, each device sums its own micro-steps' gradients, and the sums are reduced once
    after the loop (all-reduced, or with ZeRO-1 reduce-scattered by layers), as llm.c does: no
    collective inside the micro-step loop. Before, every micro-step all-reduced the gradient."""
    hlo = compiled_step_hlo("--config.mesh.data=2", f"--config.mesh.zero1={zero1}")  # 4 micro-steps
    assert "while(" in hlo and loop_body_collectives(hlo) == []
    reductions = re.findall(r" (all-reduce|reduce-scatter)(?:-start)?\(", hlo)
    assert ("reduce-scatter" in reductions) == zero1 and reductions


@pytest.mark.slow
def test_micro_steps_accumulate_layer_gradients_without_concatenating_them():
    """The blocks' params are stacked on a "layers" axis, so their gradient is a concatenation
    of the layers' gradients. Accumulated into stacked sums, every micro-step ran that
    concatenation as a pass of its own; accumulated
    layer by layer, the loop holds no float concatenation, and the stack happens once, after it."""
    hlo = compiled_step_hlo("--config.mesh.data=2")  # 4 micro-steps
    concatenations = [line for line in hlo.splitlines()
                      if re.search(r"= f32\[[\d,]+\]\S* concatenate\(", line)]
    assert concatenations, "the step stacks the layers' gradient sums once"
    assert not [line for line in concatenations if "while/body" in line]


@pytest.mark.parametrize("mesh, message", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "1 = 3, but there are 8 devices"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, "8 is not a multiple of 3"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one of"),
])
def test_mesh_that_does_not_fit_the_devices_is_a_clear_error(mesh, message):
    with pytest.raises(ConfigError, match=message):
        sharding.mesh_shape(mesh, 8)


def test_batch_that_does_not_divide_over_the_data_axes_is_a_clear_error():
    c = load_config(None, [*SPMD, "--config.mesh.data=-1", "--config.train.total_batch_size=96"])
    with pytest.raises(ConfigError, match=r"train\.total_batch_size \(96\) must be a multiple of "
                                          r"train\.micro_batch_size x data-parallel devices"):
        BatchLayout.from_config(c, sharding.make_mesh(c.mesh))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """Two real processes (2 CPU devices each, jax.distributed + gloo) match one process."""
    run = [*SPMD, "--config.mesh.data=-1", "--config.data.source=shakespeare",
           "--config.data.num_threads=1", "--config.train.log_every=1"]

    def launch(workdir, devices, *extra):
        env = process_env(devices)
        return subprocess.Popen([sys.executable, "-m", "gpt2_jax.train", "--workdir", str(workdir),
                                 *run, *extra], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    port = free_port()
    pair = [launch(tmp_path / "two", 2, f"--coordinator_address=localhost:{port}",
                   "--num_processes=2", f"--process_id={i}") for i in range(2)]
    single = launch(tmp_path / "one", 1)
    for proc in [*pair, single]:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]

    def losses(workdir):
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    assert len(losses(tmp_path / "two")) == 3  # only process 0 wrote metrics
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
