"""tensors: sequences and the one-block shift, the song-level split, streaming statistics, the
per-song files and their index, the reader over them, the export, incremental runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages import arrays, files, tensors
from stages.config import AudioConfig
from stages.tensor_files import OPEN_MAPS, Tensors
from tests.conftest import ROOT, assert_one_line_error, run_stage, save_tensors, set_params


@pytest.mark.parametrize("n_blocks, expected", [
    (1, [0]), (8, [0]), (16, [0, 8]), (17, [0, 8, 9]), (23, [0, 8, 15]), (24, [0, 8, 16])])
def test_sequence_starts_cover_the_whole_song(n_blocks, expected):
    assert tensors.sequence_starts(n_blocks, 8) == expected


@settings(max_examples=40, deadline=None)
@given(n_blocks=st.integers(1, 60), max_seq_len=st.integers(1, 12))
def test_y_is_x_shifted_by_one_block_with_a_zero_block_after_the_end(n_blocks, max_seq_len):
    blocks = np.arange(1, n_blocks + 1, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    x, y = tensors.song_sequences(blocks, max_seq_len)
    starts = tensors.sequence_starts(n_blocks, max_seq_len)
    assert x.shape == y.shape == (len(starts), max_seq_len, 3)
    for seq, start in enumerate(starts):
        for t in range(max_seq_len):
            block = start + t                       # blocks are numbered 1..n in their values
            assert x[seq, t, 0] == (block + 1 if block < n_blocks else 0)
            assert y[seq, t, 0] == (block + 2 if block + 1 < n_blocks else 0)
    covered = {s + t for s in starts for t in range(max_seq_len) if s + t < n_blocks}
    assert covered == set(range(n_blocks))          # no block of the song is dropped
    assert (y == 0).all(axis=-1).any()              # the song's end is a zero target


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.text("0123456789abcdef", min_size=16, max_size=16), min_size=2, max_size=40,
                    unique=True), extra=st.lists(st.text("0123456789abcdef", min_size=16, max_size=16),
                                                 max_size=10, unique=True),
       frac=st.floats(0.05, 0.9))
def test_split_is_by_song_disjoint_and_stable_when_songs_are_added(ids, extra, frac):
    train, val = tensors.split_songs(sorted(ids), frac, salt=0)
    assert set(train) | set(val) == set(ids) and not set(train) & set(val)
    assert val and train                            # both splits exist once there are 2 songs
    more = sorted(set(ids) | set(extra))
    train2, val2 = tensors.split_songs(more, frac, salt=0)
    hashed_val = {s for s in ids if tensors.is_validation(s, frac, 0)}
    if hashed_val and len(hashed_val) < len(ids):   # a song chosen by its own hash stays put
        assert hashed_val <= set(val2)
        assert set(train) - set(val2) == set(train) & set(train2)


def test_running_stats_match_numpy_over_the_concatenation():
    rng = np.random.default_rng(0)
    batches = [rng.normal(5, 3, (n, 4, 6)).astype(np.float32) for n in (1, 7, 3)]
    stats = tensors.RunningStats(6)
    for b in batches:
        stats.update(b)
    every = np.concatenate([b.reshape(-1, 6) for b in batches]).astype(np.float64)
    np.testing.assert_allclose(stats.mean, every.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats.var, every.var(axis=0), rtol=1e-6)  # centred in float32


AUDIO = AudioConfig(sample_rate=44100, scale=32768, block_size=5, layout="rfft")


def make_fft_dir(project, lengths: dict[str, int], n_feat: int = 5, stamp: bool = True):
    """Blocks as fft_blocks leaves them: one array per song, and the stamp naming their settings."""
    fft = project / "fft"
    fft.mkdir()
    if stamp:
        files.write_json(fft / files.STAMP, {"audio": AUDIO.as_dict(), "code": "test"})
    rng = np.random.default_rng(0)
    for song_id, n in lengths.items():
        np.save(fft / f"{song_id}.npy", rng.normal(size=(n, n_feat)).astype(np.float32) + 1)
    pd.DataFrame({"path": list(lengths), "id": list(lengths), "status": "ok", "reason": "",
                  "seconds": 1.0}).to_parquet(project / "manifest.parquet")
    return fft


def run_tensors(project, *extra: str, check: bool = True):
    return run_stage("tensors", ["--fft", "fft", "--manifest", "manifest.parquet", "--out",
                                 "processed", "--metrics", "metrics/preprocess.json", *extra],
                     project, check)


def concatenated(project, index: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray]:
    """What the stage's single `<name>_x.npy`, `_y.npy` of a split held: each song's sequences
    (`song_sequences` of its blocks), songs in sorted order."""
    songs = sorted(set(index.loc[index.split == split, "song_id"]))
    pairs = [tensors.song_sequences(np.load(project / "fft" / f"{s}.npy"), 8) for s in songs]
    if not pairs:
        return (np.zeros((0, 8, 5), np.float32),) * 2
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


SIX_SONGS = {f"{i:016x}": n for i, n in enumerate([20, 9, 3, 30, 17, 8])}


def test_stage_writes_per_song_tensors_an_index_and_training_statistics(proj):
    make_fft_dir(proj, SIX_SONGS)
    run_tensors(proj)
    out = Tensors(proj / "processed", "music")
    out.check()
    index = pd.read_parquet(out.index_path)
    train_songs = set(index.loc[index.split == "train", "song_id"])
    val_songs = set(index.loc[index.split == "val", "song_id"])
    assert train_songs and val_songs and not train_songs & val_songs
    assert train_songs | val_songs == set(SIX_SONGS)
    assert sorted(p.name for p in out.songs_dir.iterdir() if not p.name.startswith(".")) == \
        sorted(f"{s}_{part}.npy" for s in SIX_SONGS for part in ("x", "y", "stats"))
    for split, prefix in (("train", ""), ("val", "val_")):
        expect_x, expect_y = concatenated(proj, index, split)
        x, y = out.read(f"{prefix}x"), out.read(f"{prefix}y")
        assert x.shape == y.shape == expect_x.shape and x.dtype == np.float32
        assert out.n_sequences(prefix) == len(expect_x) == (index.split == split).sum()
        for i in range(len(expect_x)):           # row i of the old single file, song by song
            np.testing.assert_array_equal(x[i], expect_x[i])
            np.testing.assert_array_equal(y[i], expect_y[i])
        rows = index[index.split == split].sort_values("seq")
        assert list(rows.seq) == list(range(len(rows)))
        for r in rows.itertuples():              # the index says where each sequence lives
            blocks = np.load(proj / "fft" / f"{r.song_id}.npy")
            k = tensors.sequence_starts(len(blocks), 8).index(r.start_block)
            assert r.row == k
            np.testing.assert_array_equal(np.load(out.song_path(r.song_id, "x"))[k], x[r.seq])
    train_x = concatenated(proj, index, "train")[0].reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(np.load(out.path("mean")), train_x.mean(axis=0), rtol=1e-6)
    var = train_x.var(axis=0)
    np.testing.assert_allclose(np.load(out.path("var")), np.maximum(var, 0.01 * var.mean()),
                               rtol=1e-5)
    assert not [p for p in out.folder.rglob("*") if p.name.endswith(".tmp")]
    assert out.audio() == AUDIO                  # the data's settings, beside it
    summary = files.read_json(proj / "metrics/preprocess.json")
    assert (summary["sequences_train"], summary["sequences_val"], summary["songs_ok"]) == \
        (out.n_sequences(), out.n_sequences("val_"), 6)


def test_export_writes_the_single_files_of_the_concatenation(proj):
    make_fft_dir(proj, SIX_SONGS)
    assert_one_line_error(run_tensors(proj, "--export", "exported", check=False),
                          "'processed/music_index.parquet' not found", "dvc repro tensors")
    run_tensors(proj)
    assert_one_line_error(run_tensors(proj, "--export", "processed", check=False),
                          "Export to another folder than 'processed'")
    run_tensors(proj, "--export", "exported")
    index = pd.read_parquet(proj / "processed/music_index.parquet")
    got = {p.name for p in (proj / "exported").iterdir()}
    assert got == {f"music_{s}.npy" for s in ("x", "y", "val_x", "val_y", "mean", "var")}
    for split, prefix in (("train", ""), ("val", "val_")):
        for part, expected in zip("xy", concatenated(proj, index, split)):
            exported = np.load(proj / "exported" / f"music_{prefix}{part}.npy")
            assert exported.dtype == expected.dtype
            np.testing.assert_array_equal(exported, expected)
    for suffix in ("mean", "var"):
        assert (proj / "exported" / f"music_{suffix}.npy").read_bytes() == \
            (proj / "processed" / f"music_{suffix}.npy").read_bytes()


def test_the_reader_indexes_like_numpy_on_the_concatenation(proj):
    make_fft_dir(proj, SIX_SONGS)
    run_tensors(proj)
    out = Tensors(proj / "processed", "music")
    x = out.read("x")
    whole = concatenated(proj, pd.read_parquet(out.index_path), "train")[0]
    rng = np.random.default_rng(0)
    picks = rng.permutation(len(whole))[:7]                  # unsorted, across songs
    steps = rng.integers(8, size=7)
    flat = rng.choice(len(whole) * 8, 20, replace=False)
    for key in (0, 5, -1, len(whole) - 1, slice(None), slice(2, 9), slice(None, None, -3),
                slice(4, 4), picks, np.sort(picks), picks.tolist(), (picks, slice(None, 3)),
                (3, slice(None, 2)), (picks, steps), (flat // 8, flat % 8),
                (picks.reshape(7, 1), steps[:3]), (picks, 2), (slice(1, 4), 0, slice(1, 3)),
                np.arange(len(whole)) % 2 == 0):
        got, expected = x[key], whole[key]
        assert isinstance(got, np.ndarray) and got.shape == expected.shape, key
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.asarray(x), whole)
    assert (x.ndim, len(x), x.dtype) == (3, len(whole), np.float32)
    with pytest.raises(IndexError):
        x[len(whole)]
    assert out.read("val_x")[np.array([], int)].shape == (0, 8, 5)


def test_a_reader_keeps_a_bounded_number_of_songs_mapped(tmp_path):
    rng = np.random.default_rng(0)
    n = OPEN_MAPS + 9                                         # more songs than maps it may hold
    x = rng.normal(size=(n, 2, 3)).astype(np.float32)
    out = save_tensors(tmp_path, x, x, x[:1], x[:1], per_song=1)
    seqs = out.read("x")
    order = rng.permutation(n)
    for i in order:
        np.testing.assert_array_equal(seqs[i], x[i])
    np.testing.assert_array_equal(seqs[np.concatenate([order, order])], x[np.concatenate([order, order])])
    songs = str(out.songs_dir)
    mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
              if songs in line}
    assert 0 < len(mapped) <= OPEN_MAPS


def test_only_a_new_song_is_computed_and_a_removed_one_is_deleted(proj):
    make_fft_dir(proj, SIX_SONGS)
    run_tensors(proj)
    out = Tensors(proj / "processed", "music")
    before = {p.name: p.stat().st_mtime_ns for p in out.songs_dir.iterdir()}
    index_before = pd.read_parquet(out.index_path)
    np.save(proj / "fft" / "00000000000000ff.npy",
            np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32))
    manifest = pd.read_parquet(proj / "manifest.parquet")
    pd.concat([manifest, manifest.iloc[:1].assign(path="new", id="00000000000000ff")]).to_parquet(
        proj / "manifest.parquet")
    added = run_tensors(proj)
    assert "1 to compute, 0 removed" in added.stderr
    after = {p.name: p.stat().st_mtime_ns for p in out.songs_dir.iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {f"00000000000000ff_{p}.npy" for p in ("x", "y", "stats")}
    index = pd.read_parquet(out.index_path)
    assert "00000000000000ff" in set(index.song_id)
    for split, prefix in (("train", ""), ("val", "val_")):   # still the concatenation
        np.testing.assert_array_equal(np.asarray(out.read(f"{prefix}x")),
                                      concatenated(proj, index, split)[0])

    (out.song_path("00000000000000ff", "stats")).unlink()      # a song killed half-way is redone
    assert "1 to compute" in run_tensors(proj).stderr
    (proj / "fft" / "00000000000000ff.npy").unlink()
    removed = run_tensors(proj)
    assert "0 to compute, 1 removed" in removed.stderr
    assert not list(out.songs_dir.glob("00000000000000ff_*"))
    pd.testing.assert_frame_equal(pd.read_parquet(out.index_path), index_before)


def test_new_settings_rebuild_every_song_and_old_single_files_are_removed(proj):
    make_fft_dir(proj, SIX_SONGS)
    run_tensors(proj)
    out = Tensors(proj / "processed", "music")
    for stale in ("music_x.npy", "music_val_y.npy", "old_index.parquet"):   # an earlier layout
        (out.folder / stale).write_bytes(b"")
    (out.folder / "notes.txt").write_text("not the stage's")
    set_params(proj / "params.yaml", {"tensors.max_seq_len": 4})
    rebuilt = run_tensors(proj)
    assert "6 to compute" in rebuilt.stderr
    assert out.shape() == (4, 5) and out.read("x")[0].shape == (4, 5)
    assert sorted(p.name for p in out.folder.iterdir()) == [
        "music_audio.json", "music_index.parquet", "music_mean.npy", "music_var.npy",
        "notes.txt", "songs"]
    set_params(proj / "params.yaml", {"tensors.val_fraction": 0.5})        # a new split only
    assert "0 to compute" in run_tensors(proj).stderr


def test_a_single_song_gives_an_empty_validation_set(proj):
    make_fft_dir(proj, {"00000000000000aa": 12})
    proc = run_tensors(proj)
    assert "no validation set" in proc.stderr
    out = Tensors(proj / "processed", "music")
    assert out.read("val_x").shape == (0, 8, 5) and out.n_sequences("val_") == 0
    assert out.read("x").shape == (2, 8, 5)


def test_bad_val_fraction_names_the_key(proj):
    make_fft_dir(proj, {"00000000000000aa": 12})
    set_params(proj / "params.yaml", {"tensors.val_fraction": 1.5})
    proc = run_stage("tensors", ["--fft", "fft", "--manifest", "manifest.parquet"], proj, check=False)
    assert_one_line_error(proc, "'tensors.val_fraction'")


def test_npy_writer_leaves_nothing_that_looks_valid_when_interrupted(tmp_path):
    target = tmp_path / "big.npy"
    with pytest.raises(KeyboardInterrupt):
        with arrays.NpyWriter(target, (10, 4)) as w:
            w.write(0, np.ones((5, 4), np.float32))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with arrays.NpyWriter(target, (10, 4)) as w:
        w.write(0, np.ones((5, 4), np.float32))
        w.write(5, np.full((5, 4), 2, np.float32))
        assert not target.exists()                 # only the finished file gets the real name
    np.testing.assert_array_equal(np.load(target)[:, 0], [1] * 5 + [2] * 5)


def test_missing_inputs_are_one_sentence(proj):
    proc = run_stage("tensors", ["--fft", "fft", "--manifest", "nowhere.parquet"], proj, check=False)
    assert assert_one_line_error(proc) == \
        "error: Manifest 'nowhere.parquet' not found; run `dvc repro decode` first."
    make_fft_dir(proj, {"00000000000000aa": 12})
    for f in (proj / "fft").iterdir():
        f.unlink()
    proc = run_stage("tensors", ["--fft", "fft", "--manifest", "manifest.parquet"], proj, check=False)
    assert assert_one_line_error(proc) == \
        "error: No songs in 'fft'; run `dvc repro fft_blocks` first."


def test_blocks_of_unknown_settings_are_one_sentence(proj):
    make_fft_dir(proj, {"00000000000000aa": 12}, stamp=False)
    proc = run_stage("tensors", ["--fft", "fft", "--manifest", "manifest.parquet"], proj, check=False)
    assert assert_one_line_error(proc) == \
        "error: 'fft' does not say which audio settings made it; run `dvc repro fft_blocks` first."


def test_quiet_bins_are_floored_relative_to_the_mean_variance():
    # a bin that is silent in training (above an MP3's low-pass) must not be blown up later
    var = np.array([100.0, 1.0, 0.0])
    np.testing.assert_allclose(tensors.floored_variance(var, 0.01), [100.0, 1.0, 1.01 / 3])
    np.testing.assert_array_equal(tensors.floored_variance(var, 0.0)[:2], var[:2])
    assert tensors.floored_variance(np.zeros(3), 0.01).min() > 0     # never a division by zero


STARTED: list[str] = []


def _record(src: str, tag: str) -> str:
    STARTED.append(Path(src).name)
    return f"{Path(src).name}:{tag}"


@pytest.mark.parametrize("workers", [1, 2])
def test_per_song_work_starts_with_the_largest_song_and_returns_in_job_order(tmp_path, workers):
    from stages import pool
    sizes = {"a.npy": 10, "b.npy": 3000, "c.npy": 200, "d.npy": 50000}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"\0" * size)
    jobs = [(str(tmp_path / name), str(k)) for k, name in enumerate(sizes)]
    STARTED.clear()
    out = pool.map_songs(_record, jobs, pool.SongPool(workers=workers), "test")
    assert out == ["a.npy:0", "b.npy:1", "c.npy:2", "d.npy:3"]
    if workers == 1:                                   # in this process: the order it ran in
        assert STARTED == ["d.npy", "b.npy", "c.npy", "a.npy"]


def test_parquet_rows_round_trip_with_and_without_nulls(tmp_path):
    """The manifest's and the index's writer: the same table as pyarrow's from_pylist, whether
    the columns are plain (built from their buffers, no pandas) or hold a null (from_pylist)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = pa.schema([("path", pa.string()), ("seconds", pa.float64()), ("frames", pa.int64())])
    plain = [dict(path="a/é.mp3", seconds=1.5, frames=3), dict(path="", seconds=-np.inf, frames=0)]
    for rows in (plain, plain + [dict(path=None, seconds=2.0, frames=1)], []):
        files.write_parquet(tmp_path / "t.parquet", rows, schema)
        got = pq.ParquetFile(tmp_path / "t.parquet").read()
        assert got.equals(pa.Table.from_pylist(rows, schema=schema)) and got.to_pylist() == rows
    code = ("import sys; from pathlib import Path; import pyarrow as pa; from stages import files; "
            "files.write_parquet(Path(sys.argv[1]), [dict(a='x', b=1)], "
            "pa.schema([('a', pa.string()), ('b', pa.int64())])); print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.parquet")], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "writing plain rows imported pandas (~0.4 s of every run)"
