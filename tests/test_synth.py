"""The demo songs: deterministic to the byte in every format, and music-like (bass, melody, drums)."""
from __future__ import annotations

import hashlib

import numpy as np

from stages import audio, synth


def test_same_seed_same_song_other_seed_other_song():
    a, b, c = synth.make_song(3, 2.0), synth.make_song(3, 2.0), synth.make_song(4, 2.0)
    assert a.shape == (88200, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.corrcoef(a[:, 0], c[:, 0])[0, 1] < 0.5
    assert abs(np.abs(a).max() - 0.8) < 1e-6


def test_song_has_bass_melody_and_drums():
    song = synth.make_song(5, 6.0).mean(axis=1)
    spectrum = np.abs(np.fft.rfft(song)) ** 2
    freqs = np.fft.rfftfreq(len(song), 1 / 44100)
    band = lambda lo, hi: spectrum[(freqs >= lo) & (freqs < hi)].sum() / spectrum.sum()  # noqa: E731
    assert band(30, 200) > 0.05          # kick and bass
    assert band(200, 2000) > 0.05        # melody
    assert band(5000, 16000) > 1e-4      # hi-hat and snare noise
    frames = song[: len(song) // 1024 * 1024].reshape(-1, 1024)
    loudness_db = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-12)
    assert loudness_db.std() > 2         # notes and beats: not a static drone


def test_demo_files_are_byte_identical_across_runs_in_every_format(tmp_path):
    first = synth.write_demo(tmp_path / "a", 5, 1.0, 2.0, seed=7)
    second = synth.write_demo(tmp_path / "b", 5, 1.0, 2.0, seed=7)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert [digest(p) for p in first] == [digest(p) for p in second]   # Ogg serials included
    infos = [audio.info(p) for p in first]
    seen = {(i.format, i.samplerate, i.channels) for i in infos}
    assert {("MP3", 44100, 2), ("FLAC", 48000, 2), ("OGG", 48000, 2), ("WAV", 48000, 2)} <= seen
    assert infos[3].subtype == "PCM_24"
    for p in first:
        data, rate = audio.read(p)
        assert 1.0 <= len(data) / rate <= 2.1 and np.abs(data).max() > 0.3


def test_existing_songs_are_left_alone(tmp_path):
    path = synth.write_demo(tmp_path, 1, 1.0, 1.0, seed=1)[0]
    path.write_bytes(b"mine")
    synth.write_demo(tmp_path, 2, 1.0, 1.0, seed=1)
    assert path.read_bytes() == b"mine" and len(list(tmp_path.iterdir())) == 2
