"""benchmarks/project_gpus.py: the n-GPU projection's arithmetic (BENCHMARKS.md's 8-GPU rows)."""

import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "project_gpus", Path(__file__).resolve().parents[1] / "benchmarks" / "project_gpus.py")
project_gpus = importlib.util.module_from_spec(spec)
sys.modules["project_gpus"] = project_gpus  # dataclasses look their module up
spec.loader.exec_module(project_gpus)


def test_perfect_two_gpu_scaling_projects_perfect_scaling():
    p = project_gpus.project(1000.0, 2000.0, 4096, 1024, False, gpus=8, target_tokens_per_step=8192)
    assert p.overhead_s == pytest.approx(0)
    assert p.scaling == pytest.approx(8)


def test_overhead_grows_with_the_rings_bus_volume_and_with_micro_steps():
    # 1 GPU: 1,000 tok/s. 2 GPUs at 4,096-token steps: 2.048 s of compute + 0.2 s of overhead.
    two_gpu = 4096 / 2.248
    per_step = project_gpus.project(1000.0, two_gpu, 4096, 1024, False, 8, 8192)
    assert per_step.overhead_s == pytest.approx(0.2 * 1.75)  # 2(n-1)/n at n = 8
    assert per_step.step_s == pytest.approx(8192 / 8 / 1000 + 0.35)
    # per micro-step: 2 micro-steps per GPU at 2 GPUs (0.1 s each); 1 per GPU at 8 GPUs
    per_micro = project_gpus.project(1000.0, two_gpu, 4096, 1024, True, 8, 8192)
    assert per_micro.overhead_s == pytest.approx(0.1 * 1.75)
