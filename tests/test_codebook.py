"""The codebook stage: k-means of the training frames only, every sequence as codes, sharp decoding,
the trivial predictors on codes, and one sentence for a codebook the data cannot have."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stages import codebook, files
from stages.batches import code_baselines
from stages.config import AudioConfig, UserError
from stages.tensor_files import Tensors
from tests.conftest import assert_one_line_error, run_stage, save_tensors, set_params

CENTRES = np.array([[0.0] * 6, [8.0] * 6, [0.0, 8.0] * 3], np.float32)
CFG = codebook.CodebookConfig(codes=3, frames_per_code=1, max_frames=10_000, iterations=10,
                              members=4, seed=0)


def clustered(n: int, centres: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    which = rng.integers(len(centres), size=n)
    return (centres[which] + rng.normal(0, 0.3, (n, centres.shape[1]))).astype(np.float32), which


def test_fit_finds_the_clusters_and_decodes_to_their_own_frames():
    frames, which = clustered(600, CENTRES, 0)
    book, figures = codebook.fit(frames, CFG)
    codes = book.assign(frames)
    # each cluster is one code, whatever its number
    assert all(len(set(codes[which == c])) == 1 for c in range(3)) and len(set(codes)) == 3
    assert figures["codes_used"] == 3 and figures["distortion"] < 0.1 * figures["variance"]
    sharp = book.decode(codes[:50], "member", rng=np.random.default_rng(1))
    rows = {tuple(r) for r in frames}
    assert all(tuple(r) in rows for r in sharp)                   # real training frames...
    np.testing.assert_array_equal(book.assign(sharp), codes[:50])  # ...of the code played
    blurred = book.decode(codes[:50], "centroid", rng=np.random.default_rng(1))
    np.testing.assert_array_equal(blurred, book.centroids[codes[:50]])
    again, _ = codebook.fit(frames, CFG)
    assert again.digest == book.digest and codebook.fit(frames[:500], CFG)[0].digest != book.digest


def test_a_small_library_gets_fewer_codes_and_too_small_a_one_sentence():
    frames, _ = clustered(100, CENTRES, 1)
    book, figures = codebook.fit(frames, dataclasses.replace(CFG, codes=50, frames_per_code=40))
    assert len(book.centroids) == figures["codes"] == 2              # 100 frames // 40
    with pytest.raises(UserError, match=r"only 1 frames, too few for a codebook of 1 frames per "
                                        r"code \(codebook.frames_per_code\)"):
        codebook.fit(CENTRES[:1], CFG)


def write_tensors(folder, layout: str = "frames") -> Tensors:
    """Tensors of frames: training songs from the three clusters, validation songs from a fourth
    place no training frame comes near."""
    train, _ = clustered(20 * 9, CENTRES, 2)
    val, _ = clustered(4 * 9, np.array([[-20.0] * 6], np.float32), 3)
    seqs, val_seqs = train.reshape(-1, 9, 6), val.reshape(-1, 9, 6)
    t = save_tensors(folder, seqs[:, :8], seqs[:, 1:], val_seqs[:, :8], val_seqs[:, 1:],
                     train.mean(0), train.var(0))
    files.write_json(t.audio_path, AudioConfig(22050, 32768, 10, layout, 5).as_dict())
    return t


def test_stage_codes_every_sequence_with_a_codebook_of_training_frames(proj):
    t = write_tensors(proj / "data" / "processed")
    set_params(proj / "params.yaml", {"train.family": "codebook", "codebook.codes": 3,
                                      "codebook.members": 2, "codebook.frames_per_code": 10})
    run_stage("codebook", ["--data", str(t.folder), "--out", "cb"], proj)
    codes = codebook.Codes(proj / "cb").check()
    book = codes.load()
    assert codes.n_codes == 3 and codes.shape() == (8, 3) and codes.digest == book.digest
    assert codes.info["frames_fitted"] == 20 * 8 and codes.info["codes_used"] == 3
    # no centre anywhere near the validation songs' frames: the fit never saw them
    assert np.abs(book.centroids - (-20.0)).min() > 10
    for split in ("", "val_"):
        for part in ("x", "y"):
            got = np.load(codes.path(f"{split}{part}"))
            assert got.dtype == np.int16
            np.testing.assert_array_equal(got, book.assign(np.asarray(t.read(f"{split}{part}"))))
    x, y = codes.read("x"), codes.read("y")
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])             # y is still x one step on


def test_stage_without_the_codebook_family_writes_no_codebook(proj):
    t = write_tensors(proj / "data" / "processed")
    (proj / "cb").mkdir()
    np.save(proj / "cb" / "centroids.npy", np.zeros((2, 6)))      # an old one is not left behind
    set_params(proj / "params.yaml", {"train.family": "regression"})
    run_stage("codebook", ["--data", str(t.folder), "--out", "cb"], proj)
    assert sorted(p.name for p in (proj / "cb").iterdir()) == ["codebook.json"]
    assert files.read_json(proj / "cb" / "codebook.json") == dict(family="regression", codes=0,
                                                                  digest="")
    with pytest.raises(UserError, match=r"No codebook in '.*cb'.*run `dvc repro codebook`"):
        codebook.Codes(proj / "cb").check()


def test_a_codebook_of_fft_blocks_is_one_sentence(proj):
    t = write_tensors(proj / "data" / "processed", layout="rfft")
    set_params(proj / "params.yaml", {"train.family": "codebook"})
    proc = run_stage("codebook", ["--data", str(t.folder), "--out", "cb"], proj, check=False)
    assert_one_line_error(proc, "'train.family' is 'codebook', which needs 'fft_blocks.fft: frames' "
                                "(the data is 'rfft')")


def test_code_baselines_are_the_cross_entropy_of_frequencies_and_of_repeating(tmp_path):
    files.write_json(tmp_path / "codebook.json", dict(family="codebook", codes=3, digest="d"))
    np.save(tmp_path / "x.npy", np.array([[0, 0, 1, 1]], np.int16))
    np.save(tmp_path / "y.npy", np.array([[0, 1, 1, 0]], np.int16))    # 2 of 4 repeat the last
    np.save(tmp_path / "val_x.npy", np.array([[2, 0]], np.int16))
    np.save(tmp_path / "val_y.npy", np.array([[0, 0]], np.int16))
    got = code_baselines(codebook.Codes(tmp_path).check())
    unigram = np.array([1 + 2, 1 + 2, 1 + 0]) / 7                  # add-one counts of train y
    assert got["train_mean"] == pytest.approx(-np.log(unigram[0]))
    repeat = np.array([0.5 * unigram[0], 0.5 * unigram[0] + 0.5])  # 2 -> 0 (no repeat), 0 -> 0
    assert got["repeat_last"] == pytest.approx(-np.log(repeat).mean())


@pytest.mark.parametrize("dim", [4, 12])
def test_code_geometry_keeps_the_distances_between_the_codes_frames(dim):
    frames, _ = clustered(300, np.random.default_rng(4).normal(0, 5, (6, 6)), 5)
    centroids = codebook.fit(frames, dataclasses.replace(CFG, codes=6))[0].centroids
    vectors = codebook.geometry(centroids, dim)
    assert vectors.shape == (6, dim) and vectors.dtype == np.float32
    assert abs(vectors[:, :6].std() - 1) < 1e-4                  # unit variance where filled
    z = (centroids - centroids.mean(0)) / (centroids.std(0) + 1e-3)
    apart = lambda v: np.linalg.norm(v[:, None] - v[None], axis=-1)[np.triu_indices(6, 1)]  # noqa
    ratio = apart(vectors) / apart(z)
    if dim >= 6:                   # every component kept: the same distances, scaled
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
        assert not vectors[:, 6:].any()                           # nothing past the rank
    else:                          # the main components: the far codes stay the far ones
        assert np.corrcoef(apart(vectors), apart(z))[0, 1] > 0.95


def test_nearest_playback_holds_a_code_on_one_frame_and_moves_to_the_closest_shape():
    members = np.array([[[0, 0, 0], [5, 0, 0], [0, 5, 0], [0, 0, 0]],       # code 0
                        [[9, 9, 9], [14, 9, 9], [9, 14, 9], [1, 0, 0]]],    # code 1: 9 dB louder
                       np.float32)
    book = codebook.Codebook(members.mean(axis=1), members)
    codes = np.array([[0, 0, 0, 1, 1, 0], [1, 1, 0, 0, 1, 1]])
    firsts = set()
    for seed in range(8):
        got = book.decode(codes, "nearest", np.random.default_rng(seed))
        assert got.shape == (2, 6, 3)
        for song, row in zip(got, codes):                          # every frame a real member
            assert all(any((f == m).all() for m in members[c]) for f, c in zip(song, row))
        np.testing.assert_array_equal(got[0, :3], np.repeat(got[0, :1], 3, axis=0))  # held
        # the same shape, 9 louder; never [1, 0, 0], nearer [0, 0, 0] but of another shape
        np.testing.assert_array_equal(got[0, 3:5], [got[0, 0] + 9] * 2)
        np.testing.assert_array_equal(got[0, 5], got[0, 0])          # and back again
        np.testing.assert_array_equal(got[1, 1], got[1, 0])
        firsts.add(tuple(got[0, 0]))
    assert len(firsts) == 3                                        # the first frame: at random
    drawn = {tuple(book.decode(codes, "member", np.random.default_rng(s))[0, 1]) for s in range(30)}
    assert len(drawn) == 3                                         # member: any, at random


def test_a_new_codebook_model_starts_from_the_codes_geometry_unless_asked_not_to(proj):
    from stages import config, model as netlib, train
    t = write_tensors(proj / "data" / "processed")
    set_params(proj / "params.yaml", {"train.family": "codebook", "codebook.codes": 3,
                                      "codebook.members": 2, "codebook.frames_per_code": 10})
    run_stage("codebook", ["--data", str(t.folder), "--out", "cb"], proj)
    data = train.Data.open(t.folder, config.load_params(proj / "params.yaml"), proj / "cb")
    expected = codebook.geometry(codebook.Codes(proj / "cb").load().centroids, 8)
    for init in ("geometry", "random"):
        cfg = netlib.ModelConfig(family="codebook", hidden=8, code_init=init)
        weights = train.new_model(cfg, data).get_layer("encode").get_weights()[0]
        assert weights.shape == expected.shape
        assert np.allclose(weights, expected) == (init == "geometry")


def test_replayed_runs_find_a_passage_played_back_and_nothing_in_a_new_order():
    rng = np.random.default_rng(0)
    played = rng.integers(0, 512, size=(50, 129))               # 50 training sequences of codes
    for length in (1, 21, 22, 37, 64, 129):
        song = rng.integers(0, 512, size=300)
        song[100:100 + length] = played[7, 129 - length:]         # one passage played back
        fresh = played[rng.integers(0, 50, 300), rng.integers(0, 129, 300)]  # their codes, shuffled
        longest, share = codebook.replayed_runs(np.stack([song, fresh]), played, 22)
        assert (longest[0] == length if length > 1 else longest[0] <= 3) and longest[1] <= 3
        assert share[0] == pytest.approx(length / 300 if length >= 22 else 0)
        assert share[1] == 0
    # runs across two training sequences are not one run: each sequence is sought alone
    across = np.concatenate([played[3, -10:], played[4, :10]])[None]
    assert codebook.replayed_runs(across, played, 22)[0][0] == 10
    # a song shorter than the run sought: its longest run, and no share
    longest, share = codebook.replayed_runs(played[:1, :5], played, 22)
    assert longest.tolist() == [5] and share.tolist() == [0.0]
    longest, share = codebook.replayed_runs(played[:2], played[:0], 22)   # nothing to replay
    assert longest.tolist() == [0, 0] and share.tolist() == [0.0, 0.0]
    # a held code (a silence, a drone) is no passage, however long it also is in training
    held = played.copy()
    held[0, :100] = 5
    song = np.full((1, 300), 5)
    assert codebook.replayed_runs(song, held, 22)[0].tolist() == [0]
    song[0, 200:202] = held[0, 100:102]                       # the held code, then what followed
    longest, share = codebook.replayed_runs(song, held, 22)
    assert longest.tolist() == [102]        # the held code and the change, as in training
    assert share[0] == pytest.approx(23 / 300)   # but only the 0.5 s around the change counts
