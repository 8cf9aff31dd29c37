"""Kernels below the model: the Pallas kernels (loss, GELU, norm), FP8 matmuls, and the rule of which kernel runs where."""
