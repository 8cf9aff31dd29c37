"""atomic.write_bytes: a write either replaces the whole file or leaves the old one as it was,
with no temp file behind (two writers at once: tests/test_data.py)."""

import pytest

from gpt2_jax.util import atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "state.json"
    atomic.write_text(path, "old\n")
    with pytest.raises(TypeError):
        atomic.write_bytes(path, b"new, half", "not bytes")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    atomic.write_bytes(path, b"new, ", b"whole\n")
    assert path.read_text() == "new, whole\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    # Readable by others as a plain open() would leave it (shards on a shared disk).
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode == plain.stat().st_mode
