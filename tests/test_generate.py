"""The generate stage: step-wise state handling equals the full-sequence model, blocks back to
audio for both layouts, peak safety, seeds from the user's own files, bad input as one sentence,
and a real `dvc repro generate` that attaches the songs to the training run in MLflow."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import yaml
from stages import (arrays, audio, codebook, decode, evaluate, fft_blocks, files, generate, layouts,
                    model as netlib, quality, wav_to_npy)
from stages.batches import Normaliser
from stages.config import AudioConfig, UserError
from tests.conftest import (ROOT, assert_one_line_error, run, run_stage, save_tensors, set_params,
                            write_song)


@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("gru", 1), ("lstm", 2)])
def test_stepwise_generation_equals_full_sequence_predict(cell, layers):
    import keras
    keras.utils.set_random_seed(1)
    model = netlib.build_model(netlib.ModelConfig(cell=cell, hidden=12, layers=layers), None, 10)
    x = np.random.default_rng(0).normal(size=(3, 7, 10)).astype(np.float32)
    full = model.predict(x, verbose=0)
    stepped, _ = generate.Stepper(model).run(x)
    np.testing.assert_allclose(stepped, full, rtol=1e-4, atol=1e-5)


def test_state_carries_over_between_calls():
    import keras
    keras.utils.set_random_seed(2)
    model = netlib.build_model(netlib.ModelConfig(hidden=8), None, 6)
    x = np.random.default_rng(1).normal(size=(2, 9, 6)).astype(np.float32)
    stepper = generate.Stepper(model)
    first, states = stepper.run(x[:, :4])
    rest, _ = stepper.run(x[:, 4:], states)
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_generated_blocks_feed_back_and_temperature_adds_noise():
    import keras
    keras.utils.set_random_seed(3)
    model = netlib.build_model(netlib.ModelConfig(hidden=8), None, 6)
    stepper = generate.Stepper(model)
    seed = np.random.default_rng(2).normal(size=(2, 3, 6)).astype(np.float32)
    made = generate.generate_blocks(stepper, seed, 5, 0.0, np.random.default_rng(0))
    # closed loop: each block is the model's prediction after the seed and the blocks before it
    expect = model.predict(np.concatenate([seed, made[:, :-1]], axis=1), verbose=0)[:, 2:]
    np.testing.assert_allclose(made, expect, rtol=1e-4, atol=1e-5)
    noisy = generate.generate_blocks(stepper, seed, 5, 0.5, np.random.default_rng(0))
    assert not np.allclose(noisy, made)
    again = generate.generate_blocks(stepper, seed, 5, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(noisy, again)                      # seeded: reproducible


@pytest.mark.parametrize("layout, block_size", [("rfft", 64), ("rfft", 63), ("full", 64)])
def test_blocks_back_to_the_same_samples(layout, block_size):
    samples = np.random.default_rng(0).uniform(-0.9, 0.9, 5 * block_size).astype(np.float32)
    blocks = layouts.pack(layouts.to_blocks(samples, block_size), layout)
    norm = Normaliser(blocks.mean(0), blocks.var(0) + 1e-3)
    back = layouts.blocks_to_samples(norm.inverse(norm.forward(blocks)), layout, block_size, 0)
    np.testing.assert_allclose(back, samples, atol=1e-4)


def test_crossfade_smooths_the_block_edge():
    block = 256
    frames = np.concatenate([np.full(block, 0.5), np.full(block, -0.5)]).astype(np.float32)
    blocks = layouts.pack(layouts.to_blocks(frames, block), "rfft")
    hard = layouts.blocks_to_samples(blocks, "rfft", block, 0)
    soft = layouts.blocks_to_samples(blocks, "rfft", block, 64)
    assert np.abs(np.diff(hard)).max() > 0.9
    assert np.abs(np.diff(soft)).max() < 0.05
    assert len(soft) == 2 * block - 64


def test_a_loud_prediction_is_clipped_never_wrapped(tmp_path):
    samples, fraction = generate.peak_safe(np.array([2.0, -3.0, 0.5, 0.25], np.float32))
    np.testing.assert_array_equal(samples, [1.0, -1.0, 0.5, 0.25])
    assert fraction == 0.5
    audio.write_song(tmp_path / "loud.wav", samples, 44100, "wav")
    pcm, rate = audio.read(tmp_path / "loud.wav", dtype="int16")
    assert rate == 44100 and audio.info(tmp_path / "loud.wav").subtype == "PCM_16"
    assert pcm[0, 0] == 32767 and pcm[1, 0] == -32768 and pcm[2, 0] == 16384


def test_each_family_is_read_off_the_model_and_steps_like_the_full_sequence():
    import keras
    keras.utils.set_random_seed(4)
    x = np.random.default_rng(3).normal(size=(2, 6, 5)).astype(np.float32)
    codes = np.random.default_rng(3).integers(7, size=(2, 6)).astype(np.int32)
    for family, inputs, n_out in (("regression", x, 5), ("laplace", x, 10), ("codebook", codes, 7)):
        model = netlib.build_model(netlib.ModelConfig(family=family, hidden=8), None,
                                   7 if family == "codebook" else 5)
        stepper = generate.Stepper(model)
        assert stepper.family == family and stepper.n_features == (7 if family == "codebook" else 5)
        stepped, _ = stepper.run(inputs)
        assert stepped.shape == (2, 6, n_out)
        np.testing.assert_allclose(stepped, model.predict(inputs, verbose=0), rtol=1e-4, atol=1e-5)


def codebook_stepper(seed: int = 5):
    import keras
    keras.utils.set_random_seed(seed)
    model = netlib.build_model(netlib.ModelConfig(family="codebook", hidden=8), None, 16)
    return model, generate.Stepper(model)


def test_codes_are_sampled_by_temperature_top_k_and_top_p():
    model, stepper = codebook_stepper()
    seed = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    made = lambda t, k=0, p=1.0, s=0: generate.generate_blocks(  # noqa: E731
        stepper, seed, 40, t, np.random.default_rng(s), top_k=k, top_p=p)
    greedy = made(0.0)
    assert greedy.shape == (2, 40) and greedy.dtype == np.int32
    # temperature 0: each code is the likeliest after the seed and the codes before it
    logits = model.predict(np.concatenate([seed, greedy[:, :-1]], axis=1), verbose=0)[:, 2:]
    np.testing.assert_array_equal(greedy, logits.argmax(-1))
    np.testing.assert_array_equal(made(1.0, k=1), greedy)          # one code left: the likeliest
    np.testing.assert_array_equal(made(1.0, p=1e-6), greedy)       # the top code alone holds p
    sampled = made(1.0)
    assert (sampled != greedy).any() and len(np.unique(sampled)) > 3
    np.testing.assert_array_equal(made(1.0), sampled)              # reproducible by random_seed
    assert (made(1.0, s=1) != sampled).any()                       # another seed, other codes
    top3 = made(5.0, k=3)                                          # hot, but only 3 codes a step
    logits = model.predict(np.concatenate([seed, top3[:, :-1]], axis=1), verbose=0)[:, 2:]
    ranks = (logits > np.take_along_axis(logits, top3[..., None], -1)).sum(-1)
    assert ranks.max() <= 2 and ranks.max() > 0


def test_level_glide_keeps_codes_near_the_level_of_the_code_before():
    """`level_glide` takes that many nats off a code's logit per dB its level jumps from the
    code before (the seed's or the cue's last code at a section's start): large, a song keeps
    its level; 0, the draw is the model's own."""
    _, stepper = codebook_stepper()
    levels = np.repeat(np.array([-10, -30, -50, -70], np.float32), 4)   # codes 0-3, 4-7, ...
    seed = np.array([[1, 2, 3], [4, 5, 6]], np.int32)                  # last: -10 and -30 dB
    made = lambda glide, **kw: generate.generate_blocks(  # noqa: E731
        stepper, seed, 40, 1.0, np.random.default_rng(0), levels=levels, glide=glide, **kw)
    held = made(100.0)
    assert set(np.unique(held[0])) <= {0, 1, 2, 3} and set(np.unique(held[1])) <= {4, 5, 6, 7}
    assert len(np.unique(held[0])) > 1                    # it still draws within a level
    free = made(0.0)
    np.testing.assert_array_equal(free, generate.generate_blocks(
        stepper, seed, 40, 1.0, np.random.default_rng(0)))
    assert len(np.unique(levels[free[0]])) > 1
    cues = np.array([[[8, 9]], [[12, 13]]], np.int32)    # the second section goes on from these
    held = made(100.0, cues=cues, section_steps=20)
    assert set(np.unique(held[0, 20:])) <= {8, 9, 10, 11}
    assert set(np.unique(held[1, 20:])) <= {12, 13, 14, 15}


def test_each_song_keeps_to_its_palette_whatever_the_temperature(tmp_path):
    model, stepper = codebook_stepper()
    seed = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    palettes = np.zeros((2, 16), bool)
    palettes[0, [1, 2, 3]] = True
    palettes[1, 9:] = True
    for t, k, p in [(0.0, 0, 1.0), (1.0, 0, 1.0), (8.0, 0, 1.0), (8.0, 2, 1.0), (8.0, 0, 0.5)]:
        made = generate.generate_blocks(stepper, seed, 60, t, np.random.default_rng(0), top_k=k,
                                        top_p=p, palettes=palettes)
        assert set(np.unique(made[0])) <= {1, 2, 3} and made[1].min() >= 9
    assert len(np.unique(made[1])) > 1                    # hot draws still vary inside it
    # a song's palette is every code of every sequence of its song, seeds and targets
    codes = tmp_path / "codes"
    codes.mkdir()
    x = np.array([[0, 1], [2, 2], [5, 6], [7, 7]], np.int16)     # songs a, a, b, c
    np.save(codes / "x.npy", x)
    np.save(codes / "y.npy", x + 8)
    files.write_json(codes / "codebook.json", dict(digest="d", codes=16))
    got = generate.song_plays(codebook.Codes(codes), "", ["a", "a", "b", "c"], [1, 2])
    assert [np.flatnonzero(row).tolist() for row in got] == [[0, 1, 2, 8, 9, 10], [5, 6, 13, 14]]
    assert got[0, [0, 2, 10]].tolist() == [1, 2, 2] and got.sum() == 8 + 4


def tone_frame(amp: float) -> np.ndarray:
    """One log-magnitude frame (n_fft 1024) of a steady tone of amplitude `amp`."""
    return layouts.analyse((amp * np.sin(np.arange(8192) * 0.3)).astype(np.float32), "frames",
                           1024, 256)[4]


def four_level_book() -> tuple[np.ndarray, codebook.Codebook]:
    """Four codes, each one real frame: a tone at -9, -23, -37 and -63 dBFS."""
    frames = np.stack([tone_frame(a) for a in (0.5, 0.1, 0.02, 1e-3)])
    return frames, codebook.Codebook(frames, frames[:, None])


def test_each_section_goes_on_from_a_cue_of_its_own_song():
    model, stepper = codebook_stepper()
    seed = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    cues = np.array([[[7, 8], [9, 9]], [[10, 11], [12, 13]]], np.int32)   # 2 songs, 2 cues of 2
    made = generate.generate_blocks(stepper, seed, 13, 0.0, np.random.default_rng(0), cues=cues,
                                    section_steps=5)
    # greedy, so each code is the likeliest after everything fed before it, the cues included
    fed = np.concatenate([seed, made[:, :5], cues[:, 0], made[:, 5:10], cues[:, 1],
                          made[:, 10:]], axis=1)
    logits = model.predict(fed, verbose=0)
    played = np.r_[2:7, 9:14, 16:19]                  # the steps whose prediction is played
    np.testing.assert_array_equal(made, logits[:, played].argmax(-1))
    plain = generate.generate_blocks(stepper, seed, 13, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(plain[:, :5], made[:, :5])
    assert (plain[:, 5:] != made[:, 5:]).any()
    # the cues of a song are stretches of its own sequences, at random places
    x = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [20, 21, 22, 23], [30, 31, 32, 33]], np.int16)
    songs = ["a", "a", "b", "c"]
    got = generate.section_cues(x, songs, [1, 2], 3, 6, np.random.default_rng(0),
                                generate.Reading(None))
    assert got.shape == (2, 6, 3) and got.dtype == np.int32
    windows = {song: {tuple(row[i:i + 3]) for q, row in enumerate(x) if songs[q] == song
                      for i in range(2)} for song in "ab"}
    assert {tuple(c) for c in got[0]} <= windows["a"] and {tuple(c) for c in got[1]} <= windows["b"]
    assert len({tuple(c) for c in got[0]}) > 1                    # not one stretch every time
    # for a codebook model, from anywhere in the song, or (`louder`) from its louder half only:
    # never from its fade-out
    _, book = four_level_book()                                   # -9, -23, -37, -63 dBFS
    x = np.array([[0, 1, 0, 1], [3, 3, 2, 3], [1, 1, 1, 0], [2, 3, 3, 3]], np.int16)
    got = generate.section_cues(x, ["a"] * 4, [1], 2, 20, np.random.default_rng(0),
                                generate.Reading(None, book), louder=True)
    assert set(np.unique(got)) <= {0, 1}
    got = generate.section_cues(x, ["a"] * 4, [1], 2, 20, np.random.default_rng(0),
                                generate.Reading(None, book))
    assert set(np.unique(got)) == {0, 1, 2, 3}


def longest_run(row: np.ndarray, marked: np.ndarray) -> int:
    best = run = 0
    for code in row:
        run = run + 1 if marked[code] else 0
        best = max(best, run)
    return best


def test_a_song_stays_silent_no_longer_than_max_silent():
    model, stepper = codebook_stepper()
    seed = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    silent = np.arange(16) < 8                                   # codes 0-7 are silence
    palettes = np.zeros((2, 16), bool)
    palettes[:, :9] = True                                       # 8 silent codes and code 8
    made = lambda m: generate.generate_blocks(  # noqa: E731
        stepper, seed, 300, 1.0, np.random.default_rng(0), palettes=palettes, silent=silent,
        max_silent=m)
    free, held = made(0), made(3)
    assert max(longest_run(r, silent) for r in free) > 3          # left alone: long silences
    assert max(longest_run(r, silent) for r in held) == 3         # never a 4th silent code
    assert max(longest_run(r, ~silent) for r in held) >= 3        # then sound as long
    assert silent[held].mean() <= 0.51 < silent[free].mean()          # at most half silence
    assert palettes[0][held].all()                                # and still in its palette
    # the level of a code's frame decides whether it is silence: -60 dBFS, as evaluate's
    levels = layouts.frame_dbfs(np.stack([tone_frame(a) for a in (1.0, 1e-3, 3e-4)]), 1024)
    np.testing.assert_allclose(levels, [-3.01, -63.01, -73.47], atol=0.05)
    assert (levels < layouts.SILENT_DBFS).tolist() == [False, True, True]
    # ...or 20 dB under the median frame of the song a new one grows from
    frames = np.stack([tone_frame(a) for a in (0.5, 0.1, 0.02, 0.01, 1e-3)])  # -9 ... -63 dBFS
    book = codebook.Codebook(frames, frames[:, None])
    plays = np.array([[5, 1, 1, 1, 1], [0, 1, 0, 5, 0]])           # loud song, quiet song
    got = generate.silent_codes(book, plays, 1024, 20.0)
    assert got.tolist() == [[False, False, True, True, True], [False, False, False, False, True]]


def test_laplace_draws_spread_by_their_scale_around_the_mean():
    import keras
    keras.utils.set_random_seed(6)
    model = netlib.build_model(netlib.ModelConfig(family="laplace", hidden=8), None, 4)
    stepper = generate.Stepper(model)
    seed = np.random.default_rng(4).normal(size=(2, 3, 4)).astype(np.float32)
    mean = generate.generate_blocks(stepper, seed, 6, 0.0, np.random.default_rng(0))
    out = model.predict(np.concatenate([seed, mean[:, :-1]], axis=1), verbose=0)[:, 2:]
    np.testing.assert_allclose(mean, out[..., :4], rtol=1e-4, atol=1e-5)   # temperature 0: mu
    stepper = generate.Stepper(model)
    one = np.repeat(seed[:1], 4000, axis=0)                        # many draws of the first frame
    first = generate.generate_blocks(stepper, one, 1, 1.0, np.random.default_rng(1))[:, 0]
    mu_b = stepper.run(one[:1])[0][0, -1]
    mu, b = mu_b[:4], np.exp(mu_b[4:])
    np.testing.assert_allclose(np.median(first, axis=0), mu, atol=0.15 * b.max() + 0.02)
    np.testing.assert_allclose(np.abs(first - mu).mean(axis=0), b, rtol=0.1)   # E|X - mu| = b


def test_seeds_come_from_as_many_different_songs_as_there_are(tmp_path):
    songs = ["a"] * 6 + ["b"] * 2 + ["c"] * 1                        # sequence -> its song
    for seed in range(5):
        picks = generate.spread_picks(songs, 4, np.random.default_rng(seed))
        assert len({songs[p] for p in picks[:3]}) == 3              # three songs, three seeds
        assert picks == generate.spread_picks(songs, 4, np.random.default_rng(seed))
    x = np.arange(9 * 5 * 2, dtype=np.float32).reshape(9, 5, 2)
    t = save_tensors(tmp_path, x, x, x[:0], x[:0], per_song=2)
    norm = Normaliser(np.zeros(2), np.ones(2))
    seed, picks = generate.seed_from_tensors(t, "", 3, 3, np.random.default_rng(0),
                                             generate.Reading(norm), songs)
    assert sorted(songs[p] for p in picks) == ["a", "b", "c"]
    np.testing.assert_array_equal(seed, x[picks, :3])
    # longer songs seed more often: one song of 30 sequences against ten of one
    long_first = [generate.spread_picks(["long"] * 30 + list("abcdefghij"), 1,
                                        np.random.default_rng(s))[0] < 30 for s in range(200)]
    assert 0.6 < np.mean(long_first) < 0.9                         # 30 / 40 of the sequences
    # seeds from the louder half of each song: never from its silent intro
    loud = np.array([-9, -9, -9, 1, 2, 3, -9, 5, 0.0])
    for seed in range(20):
        picks = generate.spread_picks(songs, 3, np.random.default_rng(seed), loud)
        assert all(loud[p] > -9 for p in picks)


def test_a_song_that_barely_breathes_seeds_only_after_every_livelier_one(caplog):
    caplog.set_level("INFO", logger="rawtune")
    songs = ["drone"] * 20 + ["a"] * 3 + ["b"] * 2 + ["c"] * 2      # the drone: the longest song
    breath = np.array([2.0] * 20 + [9, 12, 7, 8, 10, 15, 11])        # each sequence's dynamics, dB
    for seed in range(20):
        picks = generate.spread_picks(songs, 3, np.random.default_rng(seed), None, breath, 6.0)
        assert sorted(songs[p] for p in picks) == ["a", "b", "c"]
        fourth = generate.spread_picks(songs, 4, np.random.default_rng(seed), None, breath, 6.0)
        assert songs[fourth[3]] == "drone"                          # then the drone, not never
        assert "1 of 4 songs breathe less" in caplog.text and "after the other 3" in caplog.text
        # no threshold, or every song as still: the draw is the one without dynamics
        plain = generate.spread_picks(songs, 4, np.random.default_rng(seed))
        assert generate.spread_picks(songs, 4, np.random.default_rng(seed), None, breath,
                                     0.0) == plain
        assert generate.spread_picks(songs, 4, np.random.default_rng(seed), None, breath,
                                     99.0) == plain
    assert "every song is as still, so all are drawn alike" in caplog.text
    assert np.mean([songs[generate.spread_picks(songs, 1, np.random.default_rng(s))[0]] == "drone"
                    for s in range(100)]) > 0.5                     # by length, it would lead
    # a sequence's dynamics are p90 - p10 of its codes' frame levels, as evaluate measures songs
    quiet, loud = np.full(5, np.log(1e-3)), np.full(5, np.log(1.0))
    gap = np.ptp(layouts.frame_dbfs(np.stack([quiet, loud]), 8))       # ~60 dB apart
    assert gap > 50
    book = codebook.Codebook(np.stack([quiet, loud]), np.stack([quiet, loud])[:, None])
    reading = generate.Reading(Normaliser(np.zeros(5), np.ones(5)), book)
    codes = np.array([[0] * 10, [0, 1] * 5, [1] * 9 + [0]])
    np.testing.assert_allclose(generate.dynamics(codes, reading), [0, gap, gap / 10], atol=0.01)


def test_training_songs_are_rejoined_from_their_sequences_for_the_replay_search(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from stages.codebook import replayed_runs
    from stages.tensors import sequence_starts
    rng = np.random.default_rng(3)
    songs = {"a": rng.integers(0, 64, 300), "b": rng.integers(0, 64, 50), "c": rng.integers(0, 64, 256)}
    x, rows = [], []
    for song_id, codes in songs.items():
        for start in sequence_starts(len(codes), 128):
            piece = codes[start:start + 128]
            x.append(np.pad(piece, (0, 128 - len(piece)), constant_values=0))
            rows.append(dict(split="train", seq=len(rows), song_id=song_id, start_block=start))
    index = tmp_path / "music_index.parquet"
    pq.write_table(pa.Table.from_pylist(rows), index)
    streams = generate.song_streams(np.stack(x), index)
    a, b, c = (row[row >= 0] for row in streams)                 # in the index's order
    np.testing.assert_array_equal(a, songs["a"])        # back to back, the last one aligned to
    np.testing.assert_array_equal(c, songs["c"])        # the song's end; b padded, as stored
    np.testing.assert_array_equal(b[:50], songs["b"])
    # so a new song that plays 200 steps of song a back is found whole, not cut at 128
    made = rng.integers(0, 64, (1, 400))
    made[0, 50:250] = songs["a"][60:260]
    assert replayed_runs(made, streams, 22)[0][0] >= 200
    assert replayed_runs(made, np.stack(x), 22)[0][0] < 200
    # an index of other sequences: each sequence stands alone
    assert generate.song_streams(np.stack(x)[:2], index).shape == (2, 128)


def test_codebook_only_settings_asked_of_another_model_are_named():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = generate.GenerateConfig.from_params(params)
    assert all(generate.ignored_settings(cfg, f) == [] for f in ("codebook", "regression",
                                                                  "laplace"))  # the defaults
    asked = dataclasses.replace(cfg, top_k=5, top_p=0.9, cue_from="louder_half",
                                seed_dynamics_db=6.0, temperature=0.5)
    assert generate.ignored_settings(asked, "laplace") == [
        "generate.top_k", "generate.top_p", "generate.cue_from", "generate.seed_dynamics_db"]
    assert generate.ignored_settings(asked, "codebook") == []


def codes_beside_frames(folder, x: np.ndarray, frames: np.ndarray, book) -> tuple:
    """A codebook's training codes `x` (sequences of codes, 2 per song) and, as the tensors
    stage writes them, the frames they code: (Tensors, Codes)."""
    tensors = save_tensors(folder / "t", frames[x], frames[x], frames[x][:0], frames[x][:0],
                           per_song=2)
    codes = codebook.Codes(folder / "codes")
    codes.folder.mkdir()
    np.save(codes.path("x"), x)
    np.save(codes.path("y"), x)
    files.write_json(codes.folder / "codebook.json", {"codes": 4, "digest": book.digest})
    return tensors, codes


def test_the_seed_and_cue_settings_reach_the_draw_of_a_codebook_model(tmp_path):
    """generate.seed_dynamics_db and generate.cue_from, from params to the seeds and cues."""
    frames, book = four_level_book()                              # -9, -23, -37, -63 dBFS
    x = np.array([[0, 1, 0, 1], [3, 3, 2, 3],                       # song A: loud, then a fade
                  [1, 1, 1, 1], [1, 1, 1, 1],                       # song B: a drone
                  [0, 1, 0, 1], [0, 2, 0, 2]], np.int16)            # song C
    tensors, codes = codes_beside_frames(tmp_path, x, frames, book)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = dataclasses.replace(generate.GenerateConfig.from_params(params), n_songs=2,
                               seed_blocks=2, seed_source="train")
    reading = generate.Reading(Normaliser(np.zeros(frames.shape[1]), np.ones(frames.shape[1])),
                               book)
    audio_cfg = AudioConfig(22050, 32768, 1024, "frames", 256)

    def draw(seed: int, **change):
        cfg = dataclasses.replace(base, **change)
        return generate.choose_seeds(cfg, codes, audio_cfg, reading, np.random.default_rng(seed),
                                     tensors.index_path, n_cues=12)

    song = lambda where: "AABBCC"[int(where["seed"].split()[-1])]  # noqa: E731  "train sequence 4"
    drawn = [{song(w) for w in draw(s, seed_dynamics_db=6)[1]} for s in range(12)]
    assert all(d == {"A", "C"} for d in drawn)                      # never the drone
    assert any("B" in {song(w) for w in draw(s, seed_dynamics_db=0)[1]} for s in range(12))
    for s in range(12):
        _, where, _, cues = draw(s, cue_from="louder_half", seed_dynamics_db=6)
        for song_cues, w in zip(cues, where):
            if song(w) == "A":
                assert set(np.unique(song_cues)) <= {0, 1}           # never from A's fade
    cues = np.concatenate([draw(s, cue_from="song", seed_dynamics_db=6)[3].ravel()
                           for s in range(12)])
    assert {2, 3} <= set(np.unique(cues))                           # the whole song


def test_songs_too_short_to_grow_a_new_song_from_seed_only_after_the_longer_ones(tmp_path, caplog):
    """generate.seed_min_length: a song shorter than that many new songs comes after every
    longer song (a new song grown from it would replay it), and is still drawn when needed."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from stages.tensors import INDEX_SCHEMA
    frames, book = four_level_book()
    x = np.array([[0, 1, 0, 1], [1, 2, 1, 2], [0, 1, 0, 1], [0, 2, 0, 2], [1, 2, 1, 2],
                  [0, 1, 0, 1]], np.int16)
    tensors, codes = codes_beside_frames(tmp_path, x, frames, book)
    # songs A and C end 104 frames in (1.21 s at hop 256 and 22.05 kHz), song B after its 4
    rows = [dict(split="train", seq=q, song_id="ABC"[q // 2], start_block=100 * (q % 2) *
                 (q // 2 != 1), row=q % 2) for q in range(6)]
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), tensors.index_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    reading = generate.Reading(Normaliser(np.zeros(frames.shape[1]), np.ones(frames.shape[1])),
                               book)
    audio_cfg = AudioConfig(22050, 32768, 1024, "frames", 256)

    def songs_drawn(seed: int, n_songs: int = 2, **change) -> list[str]:
        cfg = dataclasses.replace(generate.GenerateConfig.from_params(params), seconds=0.5,
                                  n_songs=n_songs, seed_blocks=2, seed_source="train", **change)
        where = generate.choose_seeds(cfg, codes, audio_cfg, reading, np.random.default_rng(seed),
                                      tensors.index_path)[1]
        return [w["seed_song"] for w in where]

    with caplog.at_level("INFO", logger="rawtune"):
        drawn = [songs_drawn(s, seed_min_length=2) for s in range(12)]   # B: 0.05 s < 1 s
    assert all(sorted(d) == ["A", "C"] for d in drawn)
    assert "1 of 3 songs are shorter than 1 s and seed new songs only after every longer one" \
        in caplog.text
    assert all(songs_drawn(s, 3, seed_min_length=2)[2] == "B" for s in range(6))  # when needed
    assert any("B" in songs_drawn(s, seed_min_length=0) for s in range(12))
    assert any("B" in songs_drawn(s, seed_min_length=0.05) for s in range(12))  # 0.025 s: long
    with caplog.at_level("INFO", logger="rawtune"):                  # every song as short
        assert any("B" in songs_drawn(s, seed_min_length=10) for s in range(12))
    assert "every song is shorter than 5 s, so all are drawn alike" in caplog.text


def test_a_song_static_or_smear_through_most_of_its_length_seeds_only_after_those_that_pass(
        tmp_path, caplog):
    """generate.seed_songs: passing: the songs whose median window fails evaluate's static or
    smear bar, judged on their audio, seed new songs after every song that passes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from stages import synth
    from stages.tensors import INDEX_SCHEMA
    frames, book = four_level_book()
    x = np.array([[0, 1, 0, 1]] * 6, np.int16)
    tensors, codes = codes_beside_frames(tmp_path, x, frames, book)
    rows = [dict(split="train", seq=q, song_id="ABC"[q // 2], start_block=0, row=q % 2)
            for q in range(6)]
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), tensors.index_path)
    rate, n = 22050, 22050 * 6
    t = np.arange(n) / rate
    bursts = np.random.default_rng(0).normal(0, 0.2, n) * (np.sin(2 * np.pi * t) > 0)
    npy = tmp_path / "npy"
    npy.mkdir()
    for song, samples in (("A", synth.make_song(3, 6, rate).mean(axis=1)),     # music
                          ("B", 0.3 * np.sin(2 * np.pi * 220 * t)),             # a drone
                          ("C", bursts)):                                       # noise bursts
        np.save(npy / f"{song}.npy", samples.astype(np.float32))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    th = evaluate.Thresholds.from_params(params)
    judge = generate.SourceBodies(npy, rate, 2.0, th, {"B": "drone.ogg", "C": "bursts.ogg"}).judge
    with caplog.at_level("INFO", logger="rawtune"):
        assert judge("A") == "" and judge("B").startswith("static") \
            and judge("C").startswith("smear")
    assert "generate.seed_songs: drone.ogg is static (the median of its windows breathes" in \
        caplog.text and "bursts.ogg is smear (the median of its windows is 0.0" in caplog.text
    reading = generate.Reading(Normaliser(np.zeros(frames.shape[1]), np.ones(frames.shape[1])),
                               book)
    audio_cfg = AudioConfig(rate, 32768, 1024, "frames", 256)

    def songs_drawn(seed: int, n_songs: int, seed_songs: str) -> list[str]:
        cfg = dataclasses.replace(generate.GenerateConfig.from_params(params), seconds=2.0,
                                  n_songs=n_songs, seed_blocks=2, seed_source="train",
                                  seed_songs=seed_songs)
        judged = (generate.SourceBodies(npy, rate, 2.0, th).judge if seed_songs == "passing"
                  else None)
        where = generate.choose_seeds(cfg, codes, audio_cfg, reading,
                                      np.random.default_rng(seed), tensors.index_path,
                                      judge=judged)[1]
        return [w["seed_song"] for w in where]

    assert all(songs_drawn(s, 1, "passing") == ["A"] for s in range(8))
    assert all(songs_drawn(s, 3, "passing")[0] == "A" for s in range(8))  # B, C when needed
    assert {songs_drawn(s, 1, "any")[0] for s in range(12)} > {"A"}


def test_a_song_unlike_the_rest_of_the_album_seeds_only_after_those_like_it(tmp_path, caplog):
    """generate.seed_max_fd: a song whose frames lie farther from the validation songs than
    that many times the real songs' median (evaluate's calibration) is judged like a static
    one: new songs grow from it only after every song that passes."""
    from stages import synth
    rate, n = 22050, 22050 * 6
    npy = tmp_path / "npy"
    npy.mkdir()
    for i, song in enumerate(["V1", "V2", "A", "B", "C"]):        # one album: drums, bass, chords
        np.save(npy / f"{song}.npy", synth.make_song(i + 1, 6, rate).mean(axis=1))
    t = np.arange(n) / rate                 # lively and tonal, but only high partials: a whistle
    whistles = sum(np.sin(2 * np.pi * f * t) for f in np.linspace(3000, 7000, 24)) / 24
    np.save(npy / "J.npy", (whistles * (0.55 + 0.45 * np.sin(3 * np.pi * t))).astype(np.float32))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    th = evaluate.Thresholds.from_params(params)

    def judged(max_vs_real: float, val: list[str]) -> generate.SourceBodies:
        album = generate.Album(npy, rate, ["A", "B", "C", "J"], val, th.reference_seconds,
                               max_vs_real)
        return generate.SourceBodies(npy, rate, 2.0, th, {"J": "whistles.ogg"}, album)

    bodies = judged(1.5, ["V1", "V2"])
    with caplog.at_level("INFO", logger="rawtune"):
        assert [bodies.judge(s) for s in "ABC"] == ["", "", ""]
        why = bodies.judge("J")
    assert bodies.body("J")["grows_from_tonal_median"] > th.smear_tonal       # not a smear
    figures = re.fullmatch(r"unlike the others \(frame Fréchet distance ([\d.]+) to the validation "
                           r"songs, ([\d.]+)x the real songs' median ([\d.]+) > 1.5x\)", why)
    assert figures, why
    fd, times, median = map(float, figures.groups())
    assert times > 1.5 and fd == pytest.approx(times * median, rel=0.05)
    # the median is evaluate's own calibration of these songs, the same figure it reports
    songs = {s: evaluate.read_songs(npy, [s], th.reference_seconds, rate)[0]
             for s in ["V1", "V2", "A", "B", "C", "J"]}
    ref = evaluate.Reference([songs["V1"], songs["V2"]], [songs[s] for s in "ABCJ"], rate, 1024)
    assert median == pytest.approx(ref.figures["fd_frames_real"], abs=0.1)
    assert "generate.seed_songs: whistles.ogg is unlike the others" in caplog.text
    # as far as a song may be asked, or no validation songs to measure against: all alike
    assert judged(times + 1, ["V1", "V2"]).judge("J") == ""
    caplog.clear()
    with caplog.at_level("INFO", logger="rawtune"):
        assert judged(1.5, []).judge("J") == ""
    assert "no validation songs to measure the songs against" in caplog.text


def test_a_copied_song_is_drawn_again_from_another_passing_song(tmp_path):
    """generate.min_copy: a song under it is drawn again from a spare seed of the same draw,
    never one grown from the same song or from a song the judge fails, each spare used once."""
    from stages import synth
    rate = 22050
    npy = tmp_path / "npy"
    npy.mkdir()
    t = np.arange(rate * 6) / rate
    for song, samples in (("A", synth.make_song(3, 6, rate).mean(axis=1)),
                          ("B", 0.3 * np.sin(2 * np.pi * 220 * t)),            # a drone: static
                          ("C", synth.make_song(2, 6, rate).mean(axis=1))):
        np.save(npy / f"{song}.npy", samples.astype(np.float32))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    bodies = generate.SourceBodies(npy, rate, 2.0, evaluate.Thresholds.from_params(params))
    cfg = generate.GenerateConfig.from_params(params)
    spare = generate.Grown(np.zeros((4, 2)), [dict(seed_song=s) for s in "ABCA"], None, None,
                           None)
    where = [dict(seed_song=s) for s in "ACA"]

    def pairs(seed_songs: str) -> dict[int, int]:
        grower = generate.Grower(None, dataclasses.replace(cfg, seed_songs=seed_songs), None, 0,
                                 0, bodies, np.random.default_rng(0))
        return generate.spares_for([0, 1, 2], where, spare, grower)

    # song 1 (from A) gets C's spare, song 2 (from C) the first A; the last A is left, and the
    # third song, from A too, keeps its first draw
    assert pairs("passing") == {0: 2, 1: 0}
    assert pairs("any") == {0: 1, 1: 0, 2: 2}          # the drone may seed when all are alike


@pytest.mark.parametrize("content", [b"",
                                     b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order'"])
def test_a_song_array_that_cannot_be_read_is_one_sentence_naming_it(tmp_path, content):
    npy = tmp_path / "npy"
    npy.mkdir()
    (npy / "A.npy").write_bytes(content)                      # empty, or cut short in its header
    np.save(npy / "B.npy", np.zeros((3, 2), np.float32))     # not one song's samples
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    bodies = generate.SourceBodies(npy, 22050, 2.0, evaluate.Thresholds.from_params(params))
    with pytest.raises(UserError, match=r"'.*A\.npy' is not a readable song array \(.*\); run "
                                        r"`dvc repro wav_to_npy` to write it again\."):
        bodies.judge("A")
    with pytest.raises(UserError, match=r"B\.npy' holds an array of shape \(3, 2\), not one song"):
        bodies.body("B")
    # the one reader of every .npy says the same of any array it cannot read
    with pytest.raises(UserError, match=r"A\.npy' is not a readable array \(.*\); run `dvc repro` "
                                        r"to write it again\."):
        arrays.read(npy / "A.npy")
    with pytest.raises(FileNotFoundError):                     # a missing one is the caller's
        arrays.read(npy / "gone.npy")


def test_songs_are_judged_in_the_draws_order_only_until_enough_pass():
    judged = []

    def judge(name):
        judged.append(name)
        return "static" if name == "b" else ""
    order = generate.passing_first(np.array([0, 1, 2, 3]), list("abcd"), judge, 2)
    assert order.tolist() == [0, 2, 1, 3] and judged == ["a", "b", "c"]
    assert generate.passing_first(np.array([1, 0]), list("ba"), judge, 2).tolist() == [0, 1]


def tremolo(depth_db: float, seconds: float = 6.0, rate: int = 22050) -> np.ndarray:
    """A 330 Hz tone whose level swells by `depth_db` twice a second."""
    t = np.arange(int(seconds * rate)) / rate
    swell = 10 ** (depth_db / 2 * np.sin(2 * np.pi * 2 * t) / 20)
    return (0.2 * swell * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def test_a_song_that_breathes_less_than_asked_is_spread_around_its_median_level():
    flat = tremolo(3.0)
    before = quality.frame_dbfs(flat)
    out, k = generate.breathe(flat, 6.0)
    after = quality.frame_dbfs(out)
    assert quality.spread_db(before) < 3.5 and 6.0 <= quality.spread_db(after) <= 6.5
    assert 1.5 < k < generate.MAX_STRETCH
    assert abs(np.median(after) - np.median(before)) < 0.5       # the song's level stays
    # louder frames louder, quieter ones quieter: the same swell, wider, never a new one
    assert np.corrcoef(before, after)[0, 1] > 0.99
    assert np.abs(np.diff(out)).max() < 2 * np.abs(np.diff(flat)).max()    # no step, no click
    # a song that already breathes that much is left as it is, to the bit
    lively = tremolo(12.0)
    same, k = generate.breathe(lively, 6.0)
    assert k == 1.0 and same is lively
    # a song already near full scale keeps its level: its loud frames are held at their peak
    # and its quiet ones go down instead
    loud = tremolo(3.0) * 3.5            # peaks at 0.83: 1.6 dB of room
    out, k = generate.breathe(loud, 6.0)
    assert quality.dynamics_db(out) >= 6.0 and np.abs(out).max() <= 1.0
    assert quality.level_dbfs(out) > quality.level_dbfs(loud) - 1.0
    # never more than MAX_STRETCH, and never over full scale
    out, k = generate.breathe(tremolo(1.0) * 4.5, 30.0)
    assert k == generate.MAX_STRETCH and np.abs(out).max() <= 1.0


def one_source(tmp_path, song: str, file_name: str, samples: np.ndarray, rate: int):
    """`SourceBodies` of one song (its array in tmp_path/npy, new songs of 4 s) and params.yaml's
    generate settings with every match step and floor off."""
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / f"{song}.npy", samples)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    bodies = generate.SourceBodies(npy, rate, 4.0, evaluate.Thresholds.from_params(params),
                                   {song: file_name})
    cfg = dataclasses.replace(generate.GenerateConfig.from_params(params), match_tonal=0.0,
                              match_dynamics=0.0, min_dynamics_db=0.0, min_tonal=0.0)
    return bodies, cfg


def test_each_song_breathes_at_least_as_the_song_it_grows_from(tmp_path, caplog):
    """generate.match_dynamics: a new song is spread to the median window of its source song
    (evaluate's `grows_from_dynamics_db_median`), times the factor; a song of unknown source is
    left alone."""
    rate = 22050
    bodies, cfg = one_source(tmp_path, "L", "lively.ogg", tremolo(10.0, 12.0), rate)
    source = bodies.body("L")["grows_from_dynamics_db_median"]
    cfg = dataclasses.replace(cfg, match_dynamics=1.0)
    songs = np.stack([tremolo(4.5, 4.0)] * 3)
    seeds = [dict(seed="train sequence 0", seed_song="L"), dict(seed="train sequence 1",
             seed_song="L"), dict(seed="train sequence 9", seed_song="gone")]
    with caplog.at_level("INFO", logger="rawtune"):
        done = generate.like_sources(songs, seeds, bodies, cfg, rate)
    assert quality.dynamics_db(songs[0]) >= source
    drawn = quality.dynamics_db(tremolo(4.5, 4.0))
    assert done[0]["dynamics_stretch"] > 1 and done[0]["dynamics_drawn_db"] == round(drawn, 2)
    assert f"song_01 breathes {drawn:.1f} dB, lively.ogg {source:.1f} dB (x1)" in caplog.text
    assert done[2] == {} and quality.dynamics_db(songs[2]) == drawn     # no audio for "gone"
    half = np.stack([tremolo(2.0, 4.0)])
    generate.like_sources(half, seeds[:1], bodies, dataclasses.replace(cfg, match_dynamics=0.5),
                          rate)
    assert source / 2 <= quality.dynamics_db(half[0]) < source - 1
    # generate.min_dynamics_db: a floor for every song, above what its source breathes
    floor = np.stack([tremolo(6.0, 4.0)])
    done = generate.like_sources(floor, seeds[:1], bodies, dataclasses.replace(
        cfg, min_dynamics_db=source + 3), rate)
    assert source + 3 <= quality.dynamics_db(floor[0]) < source + 4
    assert done[0]["dynamics_stretch"] > 1
    off = np.stack([tremolo(2.0, 4.0)])
    assert generate.like_sources(off, seeds[:1], bodies, dataclasses.replace(
        cfg, match_dynamics=0.0, min_dynamics_db=0.0), rate) == [{}]
    assert np.array_equal(off[0], tremolo(2.0, 4.0))
    # a song whose source is not known still gets the floor, and only the floor
    lost = np.stack([tremolo(2.0, 4.0)])
    done = generate.like_sources(lost, seeds[2:], bodies, dataclasses.replace(
        cfg, min_dynamics_db=4.5), rate)
    assert 4.5 <= quality.dynamics_db(lost[0]) < 5.0 and done[0]["dynamics_stretch"] > 1


def test_a_song_grown_from_the_users_file_is_measured_against_that_file(tmp_path):
    rate = 22050
    src = write_song(tmp_path / "mine.flac", 4, 12.0, rate=44100)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = dataclasses.replace(generate.GenerateConfig.from_params(params), seed_source="file",
                              seed_file=str(src), seconds=2.0, min_dynamics_db=0.0,
                              min_tonal=0.0)
    bodies = generate.SourceBodies(tmp_path / "no npy", rate, 2.0,
                                   evaluate.Thresholds.from_params(params))
    body = bodies.of_file(str(src), 32768)
    assert body["grows_from_windows"] >= 2 and body["grows_from_dynamics_db_median"] > 3
    songs = np.stack([tremolo(3.0, 2.0)])
    done = generate.like_sources(songs, [dict(seed=str(src))], bodies, cfg, rate)
    assert 1 < done[0]["dynamics_stretch"] < generate.MAX_STRETCH
    assert quality.dynamics_db(songs[0]) >= body["grows_from_dynamics_db_median"]


def chord_in_hiss(hiss: float, seconds: float = 4.0, rate: int = 22050) -> np.ndarray:
    """Three notes and their harmonics under white noise `hiss` times as loud as each note."""
    t = np.arange(int(seconds * rate)) / rate
    notes = sum(np.sin(2 * np.pi * f * h * t) / h for f in (220, 277, 330) for h in (1, 2, 3))
    noise = np.random.default_rng(0).normal(0, hiss, len(t))
    return (0.05 * (notes + noise)).astype(np.float32)


def test_a_song_less_tonal_than_asked_has_its_notes_sharpened_not_new_ones_added():
    rate = 22050
    smeared = chord_in_hiss(3.0)
    before = quality.tonal_fraction(smeared, rate)
    clean = quality.tonal_fraction(chord_in_hiss(0.0), rate)
    out, a = generate.sharpen(smeared, rate, 2 * before)
    assert 0 < a <= generate.MAX_SHARPEN
    assert 2 * before <= quality.tonal_fraction(out, rate) <= clean + 0.01
    assert abs(quality.level_dbfs(out) - quality.level_dbfs(smeared)) < 0.1    # same level
    # the peaks are the song's own: the same notes, nothing new
    spectrum = lambda x: 10 * np.log10(np.abs(np.fft.rfft(x)) ** 2 + 1e-9)
    freqs = np.fft.rfftfreq(len(out), 1 / rate)
    notes = np.isin(np.round(freqs), [f * h for f in (220, 277, 330) for h in (1, 2, 3)])
    gain = spectrum(out) - spectrum(smeared)
    assert gain[notes].mean() > gain[~notes & (freqs < 5000)].mean() + 3
    # each frame keeps its loudness, so the song its dynamics: a quiet lone note between loud
    # bursts of noise does not rise to them (with one loudness for the whole song: 23 -> 4 dB)
    t = np.arange(rate // 2) / rate
    noise = np.random.default_rng(1).normal(0, 0.2, (8, len(t)))
    bursts = np.concatenate([np.r_[n, 0.02 * np.sin(2 * np.pi * 440 * t)] for n in noise])
    out, a = generate.sharpen(bursts.astype(np.float32), rate,
                              2 * quality.tonal_fraction(bursts, rate))
    assert a > 0 and abs(quality.dynamics_db(out) - quality.dynamics_db(bursts)) < 0.5
    # already that tonal, or silent: left as it is
    same, a = generate.sharpen(smeared, rate, before)
    assert a == 0.0 and same is smeared
    silence = np.zeros(rate * 2, np.float32)
    assert generate.sharpen(silence, rate, 0.1)[1] == 0.0


def test_each_song_is_as_tonal_as_its_source_and_at_least_min_tonal(tmp_path, caplog):
    """generate.match_tonal against the source's median window; generate.min_tonal a floor for
    every song, its source known or not."""
    rate = 22050
    bodies, cfg = one_source(tmp_path, "C", "chords.ogg", chord_in_hiss(1.0, 12.0), rate)
    source = bodies.body("C")["grows_from_tonal_median"]
    cfg = dataclasses.replace(cfg, match_tonal=1.0)
    drawn = quality.tonal_fraction(chord_in_hiss(3.0), rate)
    assert drawn < source
    songs = np.stack([chord_in_hiss(3.0)] * 2)
    seeds = [dict(seed_song="C"), dict(seed_song="gone")]
    with caplog.at_level("INFO", logger="rawtune"):
        done = generate.like_sources(songs, seeds, bodies, cfg, rate)
    assert quality.tonal_fraction(songs[0], rate) >= source
    assert done[0]["tonal_drawn"] == round(drawn, 4) and done[0]["sharpened"] > 0
    assert f"song_01 is {drawn:.3f} tonal, chords.ogg {source:.3f} (x1): its peaks" in caplog.text
    assert done[1] == {} and np.array_equal(songs[1], chord_in_hiss(3.0))   # no audio, no floor
    # the floor: above what the source plays, and for a song whose source is not known
    floor = (drawn + source) / 2 + 0.02
    songs = np.stack([chord_in_hiss(3.0)] * 2)
    with caplog.at_level("INFO", logger="rawtune"):
        done = generate.like_sources(songs, seeds, bodies, dataclasses.replace(
            cfg, match_tonal=0.0, min_tonal=floor), rate)
    assert all(quality.tonal_fraction(x, rate) >= floor for x in songs)
    assert all(d["sharpened"] > 0 for d in done)
    assert f"at least {floor:g} asked: its peaks sharpened" in caplog.text


@pytest.mark.parametrize("name, kwargs, layout", [
    ("seed.flac", dict(rate=44100, subtype="PCM_24"), "rfft"),
    ("seed stereo 48k.wav", dict(rate=48000, channels=2, subtype="PCM_16"), "rfft"),
    ("seed.ogg", dict(rate=44100), "frames"),
])
def test_seed_from_a_users_file_is_what_preprocessing_makes_of_it(tmp_path, name, kwargs, layout):
    src = write_song(tmp_path / name, 11, 1.5, **kwargs)
    block, hop, k = 1024, 256, 4
    # the preprocessing stages' own functions on the same file
    decode.decode_song(str(src), str(tmp_path / "s.wav"), 44100, block, -60)
    wav_to_npy.wav_to_npy(str(tmp_path / "s.wav"), str(tmp_path / "s.npy"), 32768)
    fft_blocks.fft_song(str(tmp_path / "s.npy"), str(tmp_path / "f.npy"), block, layout, hop)
    expected = np.load(tmp_path / "f.npy")[:k]
    norm = Normaliser(expected.mean(0), expected.var(0) + 1.0)
    audio_cfg = AudioConfig(44100, 32768, block, layout, hop)
    seed = generate.seed_from_file(str(src), k, 2, audio_cfg, generate.Reading(norm))
    assert seed.shape == (2, k, expected.shape[1])
    np.testing.assert_allclose(seed[1], norm.forward(expected), rtol=1e-4, atol=1e-4)
    if layout == "frames":       # a codebook model reads the codes of those frames
        book = codebook.Codebook(expected[[0, 3]], expected[[0, 3]][:, None])
        codes = generate.seed_from_file(str(src), k, 1, audio_cfg, generate.Reading(norm, book))
        np.testing.assert_array_equal(codes[0], book.assign(expected))
        assert codes[0, 0] == 0 and codes[0, 3] == 1


def test_a_song_is_cut_into_sections_of_section_s_each_after_the_first_with_a_cue():
    frames = AudioConfig(22050, 32768, 2048, "frames", 512)
    n = generate.steps_for(30, frames)                         # 1293 frames
    cfg = generate.GenerateConfig.from_params(
        {"generate": {**yaml.safe_load((ROOT / "params.yaml").read_text())["generate"],
                      "section_s": 5}})
    assert generate.sections_for(cfg, n, frames) == (215, 6)  # 7 sections, the last one short
    one = dataclasses.replace(cfg, section_s=0)
    assert generate.sections_for(one, n, frames) == (0, 0)
    assert generate.steps_in(2, frames) == 86


def test_seed_file_errors_are_one_sentence(tmp_path):
    norm = generate.Reading(Normaliser(np.zeros(1024), np.ones(1024)))
    cfg = AudioConfig(44100, 32768, 1024, "rfft")
    with pytest.raises(UserError, match=r"Seed file '.*nope.wav' \(generate.seed_file\) not found"):
        generate.seed_from_file(str(tmp_path / "nope.wav"), 2, 1, cfg, norm)
    (tmp_path / "notes.txt").write_text("not audio")
    with pytest.raises(UserError, match=r"notes.txt' is not a readable audio file"):
        generate.seed_from_file(str(tmp_path / "notes.txt"), 2, 1, cfg, norm)
    short = write_song(tmp_path / "short.wav", 1, 0.05, channels=1)
    with pytest.raises(UserError, match=r"has 3 block\(s\) of 1024 samples; 'generate.seed_blocks' "
                                        r"asks for 8"):
        generate.seed_from_file(str(short), 8, 1, cfg, norm)


# --- a model is only used on the audio it was made for --------------------------------------------

DATA_AUDIO = AudioConfig(sample_rate=44100, scale=32768, block_size=1024, layout="full")


def data_and_model(tmp_path, model_audio: AudioConfig | None):
    """A project's tensors made with 1024-sample blocks in the full layout (2048 features), and a
    model of the same feature count saved with `model_audio`."""
    project = tmp_path / "p"
    (project / "data").mkdir(parents=True)
    params = project / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    set_params(params, {"decode.sample_rate": 44100, "train.family": "regression",
                        "fft_blocks.block_size": 1024, "fft_blocks.fft": "full",
                        "generate.seconds": 0.1, "generate.n_songs": 1, "generate.seed_blocks": 1})
    n_feat = 2048
    rng = np.random.default_rng(0)
    x, y, val_x, val_y = (np.abs(rng.normal(size=(n, 4, n_feat))).astype(np.float32)
                          for n in (2, 2, 1, 1))
    save_tensors(project / "data", x, y, val_x, val_y,
                 *np.abs(rng.normal(size=(2, n_feat))).astype(np.float32))
    files.write_json(project / "data" / "music_audio.json", DATA_AUDIO.as_dict())
    model = netlib.build_model(netlib.ModelConfig(hidden=4), None, n_feat)
    netlib.save(model, project / "model.keras", model_audio)
    return project


def generate_with(project):
    return run_stage("generate", ["--data", "data", "--model", "model.keras", "--out", "gen",
                                  "--metrics", "g.json", "--train-metrics", "none.json"],
                     project, check=False)


@pytest.mark.parametrize("model_audio, says", [
    (AudioConfig(44100, 32768, 2048, "rfft"),
     "(model vs data: fft_blocks.block_size 2048 vs 1024; fft_blocks.fft 'rfft' vs 'full')"),
    (AudioConfig(22050, 32768, 1024, "full"), "(model vs data: decode.sample_rate 22050 vs 44100)"),
])
def test_a_model_made_for_other_audio_is_refused_and_nothing_is_written(tmp_path, model_audio,
                                                                        says):
    project = data_and_model(tmp_path, model_audio)
    proc = generate_with(project)
    assert_one_line_error(proc, "The model 'model.keras' was trained on other audio settings "
                                "than the data in 'data'", says)
    assert not (project / "gen").exists() and not (project / "g.json").exists()


def test_a_model_made_for_the_datas_audio_writes_songs(tmp_path):
    project = data_and_model(tmp_path, DATA_AUDIO)
    set_params(project / "params.yaml", {"generate.threads": 2})
    proc = generate_with(project)
    assert proc.returncode == 0, proc.stderr
    assert audio.info(project / "gen" / "song_01.wav").frames == round(0.1 * 44100)
    summary = json.loads((project / "g.json").read_text())
    assert summary["audio"] == DATA_AUDIO.as_dict()
    assert summary["threads"] == 2 and "2 thread(s) per op" in proc.stderr   # generate.threads


def test_stale_tensors_are_refused_before_any_model_is_read(tmp_path):
    project = data_and_model(tmp_path, DATA_AUDIO)
    set_params(project / "params.yaml", {"decode.sample_rate": 22050})
    assert_one_line_error(generate_with(project), "were made with other audio settings than "
                          "params.yaml's (data vs params: decode.sample_rate 44100 vs 22050)",
                          "run `dvc repro` first")


@pytest.mark.parametrize("key, value, sentence", [
    ("generate.seconds", 0, "'generate.seconds' must be above 0"),
    ("generate.seed_source", "radio", "'generate.seed_source' is 'radio'; allowed values are"),
    ("generate.format", "aac", "'generate.format' is 'aac'; allowed values are 'wav', 'mp3'"),
    ("generate.cue_from", "chorus",
     "'generate.cue_from' is 'chorus'; allowed values are 'song', 'louder_half'"),
    ("generate.seed_dynamics_db", -1, "'generate.seed_dynamics_db'"),
    ("generate.seed_min_length", "long", "'generate.seed_min_length' must be int or float"),
    ("generate.seed_songs", "all", "'generate.seed_songs' is 'all'; allowed values are 'passing'"),
    ("generate.threads", -1, "'generate.threads'"),
    ("generate.match_dynamics", "loud", "'generate.match_dynamics' must be int or float"),
    ("generate.match_tonal", -0.5, "'generate.match_tonal'"),
    ("generate.min_dynamics_db", "8 dB", "'generate.min_dynamics_db' must be int or float"),
    ("generate.min_tonal", -0.1, "'generate.min_tonal'"),
    ("generate.seed_max_fd", "far", "'generate.seed_max_fd' must be int or float"),
    ("generate.min_copy", -1, "'generate.min_copy'"),
    ("fft_blocks.fft", "dct", "'fft_blocks.fft' is 'dct'; allowed values are 'rfft', 'full', 'frames'"),
])
def test_bad_generate_params_are_one_sentence(tmp_path, key, value, sentence):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    set_params(params, {key: value})
    proc = run_stage("generate", ["--params", str(params)], tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert sentence in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_params_file_missing_several_keys_names_them_all_in_one_sentence(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in ("level_glide", "seed_songs", "seed_min_length"):      # added over time
        del params["generate"][key]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_stage("generate", ["--params", str(path)], tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert ("params.yaml has no values for 'generate.seed_min_length', 'generate.seed_songs' and "
            "'generate.level_glide'; add them") in proc.stderr
    params["generate"]["seed_songs"], params["generate"]["seed_min_length"] = "passing", 2
    path.write_text(yaml.safe_dump(params, sort_keys=False))        # one missing: as before
    proc = run_stage("generate", ["--params", str(path)], tmp_path, check=False)
    assert proc.stderr.strip() == "error: params.yaml has no value for 'generate.level_glide'."


@pytest.mark.slow
def test_no_trained_model_is_one_sentence_never_random_weights(trained, tmp_path):
    proc = run_stage("generate", ["--model", str(tmp_path / "missing.keras"),
                                  "--out", str(tmp_path / "gen")], trained, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "run `dvc repro train` first" in proc.stderr
    assert not (tmp_path / "gen").exists()


@pytest.mark.slow
def test_repro_generate_writes_songs_and_attaches_them_to_the_training_run(trained):
    set_params(trained / "params.yaml", {"generate.seconds": 2, "generate.n_songs": 2})
    proc = run(["dvc", "repro", "generate"], trained)
    assert "Traceback" not in proc.stderr
    out = trained / "data/generated"
    for i in (1, 2):
        info = audio.info(out / f"song_{i:02d}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
        assert info.frames == 2 * 44100
        assert (out / f"song_{i:02d}.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((trained / "metrics/generate.json").read_text())
    assert summary["n_songs"] == 2 and summary["realtime_factor"] > 0
    assert summary["threads"] == 1                   # params.yaml's generate.threads
    # each song keeps to its seed song's codes: a part of the codebook, never more
    n_codes = json.loads((trained / "data/codebook/codebook.json").read_text())["codes"]
    assert len(summary["palette_codes"]) == 2
    assert all(0 < n <= n_codes for n in summary["palette_codes"])
    assert all(s["clipped_fraction"] == 0 or s["peak"] == 1.0 for s in summary["songs"])
    # how much of each song plays training codes back in order, in seconds and as a share
    assert all(0 <= s["replayed_longest_s"] <= summary["seconds"] + 0.05
               and 0 <= s["replayed_share"] <= 1
               for s in summary["songs"])
    assert "its longest exact run of training codes is" in proc.stderr
    # each song records the song its seed sequence came from (evaluate names it)
    import pyarrow.parquet as pq
    index = pq.read_table(trained / "data/processed/music_index.parquet").to_pylist()
    song_of = {f"{r['split']} sequence {r['seq']}": r["song_id"] for r in index}
    assert [s["seed_song"] for s in summary["songs"]] == [song_of[s["seed"]]
                                                           for s in summary["songs"]]
    # each song breathes at least as the median 2 s of the song it grows from (match_dynamics),
    # and at least generate.min_dynamics_db
    used = yaml.safe_load((trained / "params.yaml").read_text())
    th, floor = evaluate.Thresholds.from_params(used), used["generate"]["min_dynamics_db"]
    for i, s in enumerate(summary["songs"]):
        src = np.load(trained / "data/interim/npy" / f"{s['seed_song']}.npy")
        wanted = evaluate.source_body(src, 44100, 2, th)["grows_from_dynamics_db_median"]
        song = audio.read_mono(out / f"song_{i + 1:02d}.wav", "float32")[0]
        made = quality.dynamics_db(song)
        assert s["dynamics_stretch"] >= 1 and s["dynamics_drawn_db"] > 0
        assert made >= min(max(wanted, floor), s["dynamics_drawn_db"] * generate.MAX_STRETCH) - 0.1
        # and at least generate.min_tonal, unless sharpened as far as it goes
        assert (quality.tonal_fraction(song, 44100) >= used["generate"]["min_tonal"] - 0.005
                or s["sharpened"] == generate.MAX_SHARPEN)
    from mlflow import MlflowClient
    run_id = json.loads((trained / "metrics/train.json").read_text())["mlflow_run_id"]
    c = MlflowClient(f"sqlite:///{trained / 'mlflow.db'}")
    files = {a.path for a in c.list_artifacts(run_id, "generated")}
    assert {"generated/song_01.wav", "generated/song_01.png", "generated/song_02.wav"} <= files
    data = c.get_run(run_id).data        # a value changed since the first generate is a tag
    assert data.metrics["generate_dynamics_stretch_max"] == max(s["dynamics_stretch"]
                                                                for s in summary["songs"])
    assert data.metrics["generate_replayed_longest_s"] == max(s["replayed_longest_s"]
                                                              for s in summary["songs"])
    assert data.tags.get("generate.n_songs", data.params["generate.n_songs"]) == "2"
    again = run(["dvc", "repro", "generate"], trained)
    assert "Stage 'generate' didn't change, skipping" in again.stdout


@pytest.mark.slow
def test_mp3_output_and_a_registry_model_uri(trained, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((trained / "params.yaml").read_text())
    seed = write_song(tmp_path / "mine.ogg", 3, 2.0)       # sections cued from the user's file
    set_params(params, {"generate.seconds": 2, "generate.n_songs": 1, "generate.format": "mp3",
                        "generate.seed_source": "file", "generate.seed_file": str(seed),
                        "generate.section_s": 0.5})
    version = json.loads((trained / "metrics/train.json").read_text())["model_version"]
    e = {"MLFLOW_TRACKING_URI": f"sqlite:///{trained / 'mlflow.db'}"}
    import os
    import subprocess
    import sys
    from tests.conftest import env
    proc = subprocess.run([sys.executable, "-m", "stages.generate", "--params", str(params),
                           "--model", f"models:/rawtune/{version}", "--out", str(tmp_path / "gen"),
                           "--metrics", str(tmp_path / "g.json"), "--train-metrics", "/nowhere"],
                          cwd=trained, env={**env(), **e}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "sections of 0.5 s: 5 per song" in proc.stderr       # 174 frames, 43 a section
    info = audio.info(tmp_path / "gen" / "song_01.mp3")
    assert info.format == "MP3" and info.samplerate == 44100 and info.channels == 1
    assert abs(info.frames - 2 * 44100) < 0.05 * 2 * 44100
    assert json.loads((tmp_path / "g.json").read_text())["model"] == f"models:/rawtune/{version}"
    bad = subprocess.run([sys.executable, "-m", "stages.generate", "--params", str(params),
                          "--model", "models:/no-such-model/7", "--out", str(tmp_path / "gen2")],
                         cwd=trained, env={**env(), **e}, capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "MLflow model 'models:/no-such-model/7' could not be loaded" in bad.stderr
    assert not os.path.exists(tmp_path / "gen2")


@pytest.mark.slow
def test_the_seeds_method_is_one_param_away_and_runs_end_to_end(project):
    from tests.conftest import TINY_TRAIN, three_songs
    set_params(project / "params.yaml", {
        **TINY_TRAIN, "fft_blocks.fft": "rfft", "train.family": "regression",
        "generate.temperature": 0.0, "generate.seconds": 1, "generate.n_songs": 2,
        "evaluate.reference_seconds": 2, "generate.top_p": 0.9})
    three_songs(project)
    out = run(["dvc", "repro"], project)
    # a codebook-only setting asked of this model is named, not silently dropped
    assert ("generate.top_p acts on codebook models only; this regression model ignores it."
            in out.stdout + out.stderr)
    assert files.read_json(project / "data/codebook/codebook.json")["codes"] == 0
    train = json.loads((project / "metrics/train.json").read_text())
    assert set(train["baselines"]) == {"zero_block", "repeat_last", "train_mean"}
    made = json.loads((project / "metrics/generate.json").read_text())
    assert made["family"] == "regression" and made["audio"]["layout"] == "rfft"
    assert [audio.info(project / "data/generated" / s["file"]).frames for s in made["songs"]] \
        == [44100, 44100]
    judged = json.loads((project / "metrics/eval.json").read_text())
    assert len(judged["songs"]) == 2 and all(s["verdict"] for s in judged["songs"])
