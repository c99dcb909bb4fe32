"""tensors: sequences and the one-block shift, the song-level split, streaming statistics, files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages import arrays, files, tensors
from stages.config import AudioConfig
from stages.tensor_files import Tensors
from tests.conftest import assert_one_line_error, run_stage, set_params


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


def test_stage_writes_split_tensors_and_training_statistics(proj):
    lengths = {f"{i:016x}": n for i, n in enumerate([20, 9, 3, 30, 17, 8])}
    make_fft_dir(proj, lengths)
    run_stage("tensors", ["--fft", "fft", "--manifest", "manifest.parquet", "--out", "processed",
                          "--metrics", "metrics/preprocess.json"], proj)
    out = proj / "processed"
    index = pd.read_parquet(out / "music_index.parquet")
    train_songs = set(index.loc[index.split == "train", "song_id"])
    val_songs = set(index.loc[index.split == "val", "song_id"])
    assert train_songs and val_songs and not train_songs & val_songs
    assert train_songs | val_songs == set(lengths)
    for split, prefix in (("train", "music"), ("val", "music_val")):
        x, y = np.load(out / f"{prefix}_x.npy"), np.load(out / f"{prefix}_y.npy")
        rows = index[index.split == split].sort_values("seq")
        assert x.shape == y.shape == (len(rows), 8, 5) and x.dtype == np.float32
        for r in rows.itertuples():               # every sequence is its song's blocks
            blocks = np.load(proj / "fft" / f"{r.song_id}.npy")
            expect_x, expect_y = tensors.song_sequences(blocks, 8)
            k = tensors.sequence_starts(len(blocks), 8).index(r.start_block)
            np.testing.assert_array_equal(x[r.seq], expect_x[k])
            np.testing.assert_array_equal(y[r.seq], expect_y[k])
        assert np.isfinite(x).all() and np.isfinite(y).all()
    train_x = np.load(out / "music_x.npy").reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(np.load(out / "music_mean.npy"), train_x.mean(axis=0), rtol=1e-5)
    var = train_x.var(axis=0)
    np.testing.assert_allclose(np.load(out / "music_var.npy"), np.maximum(var, 0.01 * var.mean()),
                               rtol=1e-5)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert Tensors(out, "music").audio() == AUDIO        # the data's settings, beside it


def test_a_single_song_gives_an_empty_validation_set(proj):
    make_fft_dir(proj, {"00000000000000aa": 12})
    proc = run_stage("tensors", ["--fft", "fft", "--manifest", "manifest.parquet", "--out", "p",
                                 "--metrics", "m.json"], proj)
    assert "no validation set" in proc.stderr
    assert np.load(proj / "p" / "music_val_x.npy").shape == (0, 8, 5)
    assert np.load(proj / "p" / "music_x.npy").shape == (2, 8, 5)


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
