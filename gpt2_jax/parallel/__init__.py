"""Parallelism: the device mesh, the logical-axis sharding rules, and multi-process start-up."""
