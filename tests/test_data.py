import json
import multiprocessing

import numpy as np
import pytest

from gpt2_jax import tokenizer
from gpt2_jax.data import pipeline, prepare as prep
from gpt2_jax.errors import ShardError
from gpt2_jax.data.shards import (find_shards, open_shard,
                                  read_token_count, write_shard)

T = 8  # window = T + 1 tokens


def make_shards(tmp_path, sizes, start=0):
    """Shards of consecutive token ids, so every window is identifiable by its first token."""
    paths, next_token = [], start
    for i, size in enumerate(sizes):
        path = tmp_path / f"toy_{i:06d}.bin"
        write_shard(path, np.arange(next_token, next_token + size) % 50000)
        paths.append(str(path))
        next_token += size
    return paths


def test_write_read_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, 1000)
    write_shard(tmp_path / "a.bin", tokens)
    assert read_token_count(tmp_path / "a.bin") == 1000
    np.testing.assert_array_equal(open_shard(tmp_path / "a.bin"), tokens)
    header = np.fromfile(tmp_path / "a.bin", dtype="<i4", count=256)
    assert list(header[:3]) == [20240520, 1, 1000] and not header[3:].any()


def _write_many(path, tokens, times, barrier):
    barrier.wait()
    for _ in range(times):
        write_shard(path, tokens)


def test_processes_writing_the_same_shard_do_not_collide(tmp_path):
    """Every process of a run prepares the shipped text's shards; on a shared disk they write
    the same files at once. With one shared temp name, one process's rename found its temp file
    already renamed by the other (FileNotFoundError, seen in the two-process test)."""
    path, tokens = tmp_path / "s.bin", np.arange(1000)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    writers = [ctx.Process(target=_write_many, args=(path, tokens, 1000, barrier))
               for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0, 0]
    np.testing.assert_array_equal(open_shard(path), tokens)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin"]


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:100], "shorter than the 1024-byte header"),
    (lambda b: np.int32(123).tobytes() + b[4:], "bad magic number 123"),
    (lambda b: b[:4] + np.int32(2).tobytes() + b[8:], "unsupported shard version 2"),
    (lambda b: b[:-2], "truncated or corrupt"),
    (lambda b: b[:8] + np.int32(10**6).tobytes() + b[12:], "header says 1000000 tokens"),
])
def test_corrupt_shards_are_named_with_the_problem(tmp_path, corrupt, message):
    path = tmp_path / "bad.bin"
    write_shard(path, np.arange(100))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(ShardError, match=message) as e:
        read_token_count(path)
    assert str(path) in str(e.value)


def test_empty_glob_names_the_pattern(tmp_path):
    with pytest.raises(ShardError, match="no shard files match .*nothing_\\*\\.bin"):
        find_shards(str(tmp_path / "nothing_*.bin"))


def test_shard_shorter_than_one_window_is_reported(tmp_path):
    paths = make_shards(tmp_path, [100, T])  # the second holds 8 tokens < 9
    with pytest.raises(ShardError, match=r"toy_000001\.bin: 8 tokens, fewer than one window"):
        pipeline.WindowSource(paths, T)


def test_one_epoch_covers_every_target_token_exactly_once(tmp_path):
    sizes = [81, 50, 33]
    paths = make_shards(tmp_path, sizes)
    source = pipeline.WindowSource(paths, T)
    assert len(source) == sum((n - 1) // T for n in sizes)
    windows = [source[i] for i in range(len(source))]
    assert all(w.shape == (T + 1,) and w.dtype == np.int32 for w in windows)
    targets = np.concatenate([w[1:] for w in windows])
    assert len(np.unique(targets)) == len(targets)  # no token is a target twice
    for path, n in zip(paths, sizes):  # and each shard's first (n - 1) // T * T targets are covered
        shard = np.asarray(open_shard(path))
        assert set(shard[1:1 + (n - 1) // T * T]) <= set(targets)
    assert all(np.all(np.diff(w) == 1) for w in windows)  # windows never cross a shard boundary


def epoch_of_first_tokens(paths, seed, process_index=0, process_count=1, accum=1, batch=2):
    it = pipeline.train_batches(paths, seq_len=T, accum_steps=accum, local_batch=batch, seed=seed,
                                num_threads=2, process_index=process_index,
                                process_count=process_count)
    n_windows = len(pipeline.WindowSource(paths, T))
    steps = n_windows // (accum * batch * process_count)
    return [next(it)[..., 0].ravel() for _ in range(steps)]


def test_same_seed_same_order_different_seed_different_order(tmp_path):
    paths = make_shards(tmp_path, [401, 401])
    a, b, c = (np.concatenate(epoch_of_first_tokens(paths, s)) for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sorted(a) == sorted(c)  # the same windows, permuted


def test_batches_have_the_train_step_layout(tmp_path):
    paths = make_shards(tmp_path, [401])
    it = pipeline.train_batches(paths, seq_len=T, accum_steps=3, local_batch=2, seed=0,
                                num_threads=1, process_index=0, process_count=1)
    batch = next(it)
    assert batch.shape == (3, 2, T + 1) and batch.dtype == np.int32


def test_processes_read_disjoint_parts_whose_union_is_the_epoch(tmp_path):
    paths = make_shards(tmp_path, [321, 160])
    whole = np.concatenate(epoch_of_first_tokens(paths, seed=3, batch=4))
    parts = [np.concatenate(epoch_of_first_tokens(paths, seed=3, process_index=p, process_count=2,
                                                  batch=2)) for p in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(np.concatenate(parts)) == sorted(whole)


def test_restored_iterator_replays_the_same_batches(tmp_path):
    paths = make_shards(tmp_path, [401, 203])

    def new_iterator():
        return pipeline.train_batches(paths, seq_len=T, accum_steps=2, local_batch=3, seed=7,
                                      num_threads=2, process_index=0, process_count=1)

    it = new_iterator()
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # it must survive serialization
    expected = [next(it) for _ in range(30)]  # runs past the end of the first epoch
    restored = new_iterator()
    restored.set_state(state)
    for a, b in zip(expected, [next(restored) for _ in range(30)]):
        np.testing.assert_array_equal(a, b)


def test_eval_batches_are_the_first_windows_in_order(tmp_path):
    paths = make_shards(tmp_path, [81])
    batches = list(pipeline.eval_batches(paths, seq_len=T, local_batch=4, max_batches=5,
                                         process_index=0, process_count=1))
    assert len(batches) == 2  # 10 windows -> 2 full batches of 4
    np.testing.assert_array_equal(batches[0][:, 0], [0, 8, 16, 24])


DOCS = ["First document.\nIt has two lines.", "Second: émigré façade — unicode ✓",
        "Third " * 40, "", "Fifth and last."]


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))


def decode_documents(paths):
    tokens = np.concatenate([np.asarray(open_shard(p)) for p in paths])
    starts = np.flatnonzero(tokens == tokenizer.EOT_TOKEN)
    return [tokenizer.decode(tokens[s + 1:e]) for s, e in zip(starts, [*starts[1:], len(tokens)])]


def test_prepare_jsonl_round_trips_the_documents(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", DOCS)
    prep.main(["files", "--input", str(tmp_path / "*.jsonl"), "--out", str(tmp_path / "out"),
               "--shard_size", "20", "--workers", "1"])
    [val] = find_shards(str(tmp_path / "out" / "out_val_*.bin"))
    train = find_shards(str(tmp_path / "out" / "out_train_*.bin"))
    assert val.endswith("out_val_000000.bin") and train[0].endswith("out_train_000001.bin")
    assert all(read_token_count(p) == 20 for p in [val, *train[:-1]])  # all but the last are full
    assert decode_documents([val, *train]) == DOCS


def test_prepare_reads_txt_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text(DOCS[0])
    pq.write_table(pa.table({"text": DOCS[1:]}), tmp_path / "b.parquet")
    docs = list(prep.read_local_documents([str(tmp_path / "a.txt"), str(tmp_path / "b.parquet")]))
    assert docs == DOCS


def test_bad_jsonl_line_is_named(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: not a JSON object with a 'text' field"):
        list(prep.read_local_documents([str(tmp_path / "c.jsonl")]))


def test_interrupted_prepare_resumes_without_redoing_finished_shards(tmp_path, monkeypatch):
    docs = [f"document {i}: " + "words " * (i % 7) for i in range(60)]
    source = {"files": ["in-memory"]}
    prep.prepare(iter(docs), tmp_path / "full", "x", source, shard_size=32, workers=1)
    full = sorted(find_shards(str(tmp_path / "full" / "x_*.bin")), key=lambda p: p[-10:])

    written = []
    original = prep.write_shard

    def write_then_maybe_crash(path, tokens):
        if len(written) == 3:
            raise KeyboardInterrupt  # killed while shard 3 is being written
        original(path, tokens)
        written.append(path.name)

    monkeypatch.setattr(prep, "write_shard", write_then_maybe_crash)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(iter(docs), tmp_path / "part", "x", source, shard_size=32, workers=1)
    assert len(find_shards(str(tmp_path / "part" / "x_*.bin"))) == 3

    written.clear()
    monkeypatch.setattr(prep, "write_shard", lambda path, tokens: (original(path, tokens),
                                                                   written.append(path.name)))
    prep.prepare(iter(docs), tmp_path / "part", "x", source, shard_size=32, workers=1)
    assert written[0] == "x_train_000003.bin"  # shards 0-2 were not rewritten
    resumed = sorted(find_shards(str(tmp_path / "part" / "x_*.bin")), key=lambda p: p[-10:])
    assert [p.split("/")[-1] for p in resumed] == [p.split("/")[-1] for p in full]
    for a, b in zip(full, resumed):
        np.testing.assert_array_equal(open_shard(a), open_shard(b))
    # a third run finds everything done and writes nothing
    written.clear()
    prep.prepare(iter(docs), tmp_path / "part", "x", source, shard_size=32, workers=1)
    assert written == []


def test_prepare_command_names_a_bad_line(tmp_path):
    lines = [json.dumps({"text": "word " * 30})] * 4 + ['{"body": "no text"}']
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=r"bad\.jsonl:5: not a JSON object with a 'text' field"):
        prep.main(["files", "--input", str(tmp_path / "*.jsonl"), "--out", str(tmp_path / "out"),
                   "--shard_size", "40", "--workers", "1"])
