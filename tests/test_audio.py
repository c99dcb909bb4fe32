"""audio: float -> int16 conversion that clips instead of wrapping, content ids."""
from __future__ import annotations

import numpy as np

from stages import audio


def test_to_int16_clips_and_never_wraps_around():
    pcm, clipped = audio.to_int16(np.array([0.0, 0.5, -0.5, 1.0, 1.7, -1.0, -3.0], np.float32))
    assert pcm.dtype == np.int16
    assert pcm.tolist() == [0, 16384, -16384, 32767, 32767, -32768, -32768]
    assert clipped == 3                        # 1.0 (-> 32768), 1.7 and -3.0; -1.0 fits exactly


def test_int16_round_trip_is_exact_for_every_value():
    every = np.arange(-32768, 32768, dtype=np.int16)
    pcm, clipped = audio.to_int16(every.astype(np.float32) / np.float32(audio.INT16_SCALE))
    np.testing.assert_array_equal(pcm, every)
    assert clipped == 0


def test_content_id_follows_bytes_not_names(tmp_path):
    (tmp_path / "a.mp3").write_bytes(b"same bytes")
    (tmp_path / "b.wav").write_bytes(b"same bytes")
    (tmp_path / "c.mp3").write_bytes(b"other bytes")
    ids = [audio.content_id(tmp_path / n) for n in ("a.mp3", "b.wav", "c.mp3")]
    assert ids[0] == ids[1] != ids[2] and len(ids[0]) == 16


def test_downmix_is_the_mean_of_the_channels():
    rng = np.random.default_rng(0)
    for channels in range(1, 9):
        chunk = rng.uniform(-1, 1, (4097, channels)).astype(np.float32)
        mono = audio.downmix(chunk)
        assert mono.shape == (4097,) and mono.dtype == np.float32
        expected = chunk.mean(axis=1, dtype=np.float32)
        if channels <= 6:                              # up to 5.1: the very same floats
            np.testing.assert_array_equal(mono, expected)
        else:
            np.testing.assert_allclose(mono, expected, atol=1e-6)
    assert not np.shares_memory(audio.downmix(chunk[:, :1]), chunk)   # mono: a copy, never a view
