"""fft_blocks: blocks with zero padding, the rfft/full layouts, their inverse, the stage's files."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays as np_arrays

from stages import arrays, config, fft_blocks, files, layouts
from stages.config import AudioConfig
from tests.conftest import assert_one_line_error, run_stage, set_params


@settings(max_examples=60, deadline=None)
@given(block_size=st.integers(2, 700), n_blocks=st.integers(1, 4), layout=st.sampled_from(["rfft", "full"]),
       seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(block_size, n_blocks, layout, seed):
    blocks = np.random.default_rng(seed).uniform(-1, 1, (n_blocks, block_size)).astype(np.float32)
    features = layouts.pack(blocks, layout)
    assert features.shape == (n_blocks, layouts.n_features(block_size, layout))
    assert features.dtype == np.float32
    np.testing.assert_allclose(layouts.unpack(features, layout, block_size), blocks, atol=2e-5)


@settings(max_examples=30, deadline=None)
@given(samples=np_arrays(np.float32, st.integers(1, 3000), elements=st.floats(-1, 1, width=32)),
       block_size=st.integers(2, 500))
def test_blocks_zero_pad_only_the_last_block(samples, block_size):
    blocks = layouts.to_blocks(samples, block_size)
    assert blocks.shape == (-(-len(samples) // block_size), block_size)
    flat = blocks.reshape(-1)
    np.testing.assert_array_equal(flat[: len(samples)], samples)
    assert not flat[len(samples):].any()
    assert len(flat) - len(samples) < block_size


@pytest.mark.parametrize("block_size", [2048, 11025, 7])
def test_rfft_drops_exactly_the_always_zero_imaginary_parts(block_size):
    blocks = np.random.default_rng(1).standard_normal((3, block_size)).astype(np.float32)
    features = layouts.pack(blocks, "rfft")
    assert features.shape[1] == block_size                       # lossless with no redundancy
    spectrum = np.fft.rfft(blocks.astype(np.float64), axis=-1)
    n_bins = block_size // 2 + 1
    np.testing.assert_allclose(features[:, :n_bins], spectrum.real, rtol=1e-4, atol=1e-3)
    last = n_bins - 1 if block_size % 2 == 0 else n_bins
    np.testing.assert_allclose(features[:, n_bins:], spectrum.imag[:, 1:last], rtol=1e-4, atol=1e-3)


def seed_fft_blocks(song: np.ndarray, block_size: int) -> np.ndarray:
    """The seed's own code: a Python loop of zero-padded blocks, np.fft.fft each, real ++ imag."""
    out, done = [], 0
    while done < len(song):
        block = song[done:done + block_size]
        if len(block) < block_size:
            block = np.concatenate((block, np.zeros(block_size - len(block))))
        spectrum = np.fft.fft(block)
        out.append(np.concatenate((np.real(spectrum), np.imag(spectrum))))
        done += block_size
    return np.array(out)


def test_full_layout_is_the_seeds_fft_concatenation():
    song = np.random.default_rng(2).uniform(-1, 1, 5000).astype(np.float32)
    ours = layouts.pack(layouts.to_blocks(song, 2048), "full")
    seed = seed_fft_blocks(song.astype(np.float64), 2048)
    assert ours.shape == seed.shape == (3, 4096)
    np.testing.assert_allclose(ours, seed, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("layout", ["rfft", "full"])
def test_fft_song_streams_chunks_into_the_same_result(tmp_path, layout):
    block_size = 16
    n = block_size * (fft_blocks.CHUNK_BLOCKS + 40) + 5          # crosses a chunk edge, padded tail
    song = np.random.default_rng(3).uniform(-1, 1, n).astype(np.float32)
    np.save(tmp_path / "song.npy", song)
    n_blocks = fft_blocks.fft_song(str(tmp_path / "song.npy"), str(tmp_path / "out.npy"),
                                   block_size, layout, block_size)
    got = np.load(tmp_path / "out.npy")
    assert n_blocks == got.shape[0] == fft_blocks.CHUNK_BLOCKS + 41
    np.testing.assert_array_equal(got, layouts.pack(layouts.to_blocks(song, block_size), layout))
    back = layouts.unpack(got, layout, block_size).reshape(-1)
    np.testing.assert_allclose(back[:n], song, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_frames_stream_chunks_into_the_song_s_log_magnitude_stft(tmp_path):
    n_fft, hop = 64, 16
    n = hop * (fft_blocks.CHUNK_BLOCKS + 40) + 5                 # crosses a chunk edge
    song = np.random.default_rng(4).uniform(-1, 1, n).astype(np.float32)
    np.save(tmp_path / "song.npy", song)
    count = fft_blocks.fft_song(str(tmp_path / "song.npy"), str(tmp_path / "out.npy"), n_fft,
                                "frames", hop)
    got = np.load(tmp_path / "out.npy")
    assert count == got.shape[0] == n // hop + 1 and got.shape[1] == n_fft // 2 + 1
    whole = np.log(np.abs(layouts.stft(song, n_fft, hop)) + layouts.LOG_FLOOR)
    np.testing.assert_allclose(got, whole, atol=1e-4)
    # frame 10 is the Hann-windowed samples centred on sample 10 * hop
    centred = song[10 * hop - n_fft // 2:10 * hop + n_fft // 2] * layouts.window(n_fft)
    np.testing.assert_allclose(got[10], np.log(np.abs(np.fft.rfft(centred)) + layouts.LOG_FLOOR),
                               atol=1e-4)


@pytest.mark.parametrize("n, n_fft, hop", [(22050 * 2 + 123, 2048, 512), (1000, 256, 64),
                                            (100, 256, 128)])
def test_istft_undoes_stft(n, n_fft, hop):
    song = np.random.default_rng(5).uniform(-1, 1, n).astype(np.float32)
    spec = layouts.stft(song, n_fft, hop)
    back = layouts.istft(spec, n_fft, hop, n)
    assert back.shape == song.shape and back.dtype == np.float32
    np.testing.assert_allclose(back, song, atol=1e-5)
    # a change made to the frames is heard: half the magnitude, half the samples
    np.testing.assert_allclose(layouts.istft(spec / 2, n_fft, hop, n), song / 2, atol=1e-5)


def test_griffin_lim_rebuilds_audio_with_the_frames_magnitudes():
    rate, n_fft, hop = 8000, 256, 64
    t = np.arange(2 * rate) / rate
    song = (0.4 * np.sin(2 * np.pi * 440 * t) * (t < 1) + 0.3 * np.sin(2 * np.pi * 660 * t)
            ).astype(np.float32)
    log_mag = np.log(np.abs(layouts.stft(song, n_fft, hop)) + layouts.LOG_FLOOR)
    batch = np.stack([log_mag, log_mag[::-1]])                    # two songs at once
    out = layouts.griffin_lim(batch, n_fft, hop, iters=32)
    assert out.shape == (2, (len(log_mag) - 1) * hop)
    for rebuilt, target in zip(out, batch):
        mag = np.abs(layouts.stft(rebuilt, n_fft, hop))
        wanted = np.exp(target[:len(mag)]) - layouts.LOG_FLOOR
        assert np.linalg.norm(mag - wanted) / np.linalg.norm(wanted) < 0.15
    level = lambda x: 10 * np.log10(np.mean(x ** 2))   # noqa: E731
    assert abs(level(out[0]) - level(song[:out.shape[1]])) < 1.0
    assert abs(level(out[1][rate:]) - level(song[:rate - hop])) < 1.0   # reversed: 440 Hz at the end


def test_phase_locked_start_needs_a_few_griffin_lim_iterations_not_many(monkeypatch):
    """Griffin-Lim from a phase-locked vocoder's phases (the default) against random phases, on
    two songs at once (tones that start, stop and glide, over a little noise): no iteration at
    all from locked phases beats 16 from random ones."""
    rate, n_fft, hop = 8000, 256, 64
    t = np.arange(3 * rate) / rate
    song = (0.3 * np.sin(2 * np.pi * 440 * t) * (t < 1.5)
            + 0.2 * np.sin(2 * np.pi * (600 * t + 40 * np.sin(np.pi * t)))
            + 0.2 * np.sin(2 * np.pi * 1230 * t) * (t > 1)
            + 0.01 * np.random.default_rng(0).normal(size=t.size)).astype(np.float32)
    log_mag = np.log(np.abs(layouts.stft(song, n_fft, hop)) + layouts.LOG_FLOOR)
    batch = np.stack([log_mag, log_mag[::-1]])
    wanted = np.exp(batch) - layouts.LOG_FLOOR

    def error(init: str, iters: int) -> float:
        out = layouts.griffin_lim(batch, n_fft, hop, iters, init=init)
        assert out.shape == (2, (batch.shape[1] - 1) * hop) and np.isfinite(out).all()
        mag = np.abs(layouts.stft(out, n_fft, hop))[:, :batch.shape[1]]
        return float(np.linalg.norm(mag - wanted) / np.linalg.norm(wanted))
    assert error("locked", 0) < error("random", 16) < error("random", 2)
    assert error("locked", 2) < 0.5 * error("random", 16)
    phases = layouts.locked_phases(batch, n_fft, hop)
    assert phases.shape == batch.shape and phases.dtype == np.float32
    assert phases.min() >= 0 and phases.max() < 2 * np.pi + 1e-5
    # worked through in chunks of frames: the chunk size never changes a phase
    assert batch.shape[1] > 2 * layouts.PHASE_CHUNK
    for chunk in (7, batch.shape[1]):
        monkeypatch.setattr(layouts, "PHASE_CHUNK", chunk)
        np.testing.assert_array_equal(layouts.locked_phases(batch, n_fft, hop), phases)


def test_stage_writes_one_array_per_song_and_prunes(proj):
    set_params(proj / "params.yaml", {"fft_blocks.fft": "rfft"})
    npy, out = proj / "npy", proj / "fft"
    npy.mkdir()
    for name, n in (("a", 5000), ("b", 2048)):
        np.save(npy / f"{name}.npy", np.random.default_rng(len(name)).uniform(-1, 1, n).astype(np.float32))
    run_stage("fft_blocks", ["--npy", str(npy), "--out", str(out)], proj)
    assert arrays.shape_of(out / "a.npy") == (3, 2048) and arrays.shape_of(out / "b.npy") == (1, 2048)
    (npy / "b.npy").unlink()
    mtime = (out / "a.npy").stat().st_mtime_ns
    proc = run_stage("fft_blocks", ["--npy", str(npy), "--out", str(out)], proj)
    assert "0 to compute, 1 removed" in proc.stderr
    assert not (out / "b.npy").exists() and (out / "a.npy").stat().st_mtime_ns == mtime
    set_params(proj / "params.yaml", {"fft_blocks.fft": "full"})      # new params: recompute
    run_stage("fft_blocks", ["--npy", str(npy), "--out", str(out)], proj)
    assert arrays.shape_of(out / "a.npy") == (3, 4096)
    assert files.read_stamp(out)["audio"] == AudioConfig(44100, 32768, 2048, "full").as_dict()


@pytest.mark.parametrize("key, value", [("decode.sample_rate", 22050), ("wav_to_npy.scale", 32767)])
def test_new_samples_under_the_same_song_ids_are_transformed_again(proj, key, value):
    # a song decoded at a new rate (or scaled anew) keeps its id: only the settings in the
    # stamp tell that its blocks are stale
    npy, out = proj / "npy", proj / "fft"
    npy.mkdir()
    set_params(proj / "params.yaml", {"fft_blocks.fft": "rfft"})
    np.save(npy / "a.npy", np.full(4096, 0.5, np.float32))
    run_stage("fft_blocks", ["--npy", str(npy), "--out", str(out)], proj)
    np.save(npy / "a.npy", np.full(4096, 0.25, np.float32))          # what the rerun upstream made
    set_params(proj / "params.yaml", {key: value})
    proc = run_stage("fft_blocks", ["--npy", str(npy), "--out", str(out)], proj)
    assert "1 to compute" in proc.stderr
    assert np.load(out / "a.npy")[0, 0] == pytest.approx(0.25 * 2048)


def test_unknown_fft_layout_is_one_sentence(proj):
    set_params(proj / "params.yaml", {"fft_blocks.fft": "dct"})
    (proj / "npy").mkdir()
    np.save(proj / "npy" / "a.npy", np.zeros(3000, np.float32))
    proc = run_stage("fft_blocks", ["--npy", "npy", "--out", "fft"], proj, check=False)
    assert assert_one_line_error(proc) == \
        "error: params.yaml 'fft_blocks.fft' is 'dct'; allowed values are 'rfft', 'full', 'frames'."
    assert not (proj / "fft").exists()


@pytest.mark.parametrize("n_fft", [512, 1024, 2048, 11025])
def test_the_window_is_scipys_periodic_hann_bit_for_bit(n_fft):
    from scipy import signal
    np.testing.assert_array_equal(layouts.window(n_fft),
                                  signal.get_window("hann", n_fft).astype(np.float32))


def test_griffin_lim_on_threads_makes_each_song_as_one_batch_does(monkeypatch):
    """The songs are split into one group per core, each on its own thread: how many groups
    (1, 2 or one per song) never changes a song, for either start."""
    rate, n_fft, hop = 8000, 256, 64
    t = np.arange(rate) / rate
    songs = [np.sin(2 * np.pi * f * t).astype(np.float32) * a
             for f, a in ((440, 0.4), (523, 0.2), (660, 0.3))]
    batch = np.stack([np.log(np.abs(layouts.stft(s, n_fft, hop)) + layouts.LOG_FLOOR)
                      for s in songs])
    for init in layouts.PHASE_INITS:
        made = {}
        for cores in (1, 2, 3):
            monkeypatch.setattr(config, "usable_cores", lambda cores=cores: cores)
            made[cores] = layouts.griffin_lim(batch, n_fft, hop, 4, seed=3, init=init)
        assert made[1].shape == (3, (batch.shape[1] - 1) * hop)
        np.testing.assert_allclose(made[2], made[1], atol=1e-5)
        np.testing.assert_allclose(made[3], made[1], atol=1e-5)
        assert np.abs(made[1][0] - made[1][1]).max() > 0.05        # the songs differ
