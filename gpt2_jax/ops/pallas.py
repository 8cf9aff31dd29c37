"""What the Pallas kernels share: on a GPU they compile with Triton; anywhere else they run in
Pallas' interpreter, so tests on CPU check the same kernel code against the plain formulas."""

from __future__ import annotations

import jax


def interpret() -> bool:
    """Run pallas_call in the interpreter (every backend but GPU)."""
    return jax.default_backend() != "gpu"
