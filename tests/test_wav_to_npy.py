"""Stage `wav_to_npy` through its real command line: exact int16 -> float32 scaling (/32768 by
default, the seed's /32767 on request), one sample per WAV frame, incremental runs, bad params.

The WAVs are written directly (every int16 value from -32768 to 32767, and seeded noise), so the
expected arrays are known exactly, into a plain copy of the project (conftest's `proj`: params.yaml
with conftest.SMALL_PARAMS, without the git/DVC repository the stage does not use).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from stages import audio
from tests.conftest import (assert_one_line_error, drop_param, make_project, run_stage, set_params,
                            write_song)

WAV_DIR = "data/interim/wav"
NPY_DIR = "data/interim/npy"
RATE = 44100
SONGS = {  # the decode stage's naming: <content id>.wav
    "00000000000000aa": np.arange(-32768, 32768, dtype=np.int16),  # every int16 value
    "00000000000000bb": np.random.default_rng(0).integers(-32768, 32768, 3001).astype(np.int16),
}


def with_wavs(project: Path) -> Path:
    """`project` with the SONGS written where decode leaves its WAVs."""
    for song_id, pcm in SONGS.items():
        audio.write(project / WAV_DIR / f"{song_id}.wav", pcm, RATE, subtype="PCM_16")
    return project


@pytest.fixture
def proj(proj: Path) -> Path:
    """conftest's plain project copy, with the SONGS' WAVs."""
    return with_wavs(proj)


def wav_to_npy(project: Path, wav_dir: str = WAV_DIR):
    return run_stage("wav_to_npy", ["--wav", wav_dir, "--out", NPY_DIR], cwd=project, check=False)


def n_to_compute(proc) -> int:
    found = re.findall(r": \d+ songs, (\d+) to compute, ", proc.stderr)
    assert len(found) == 1, proc.stderr
    return int(found[0])


def npy_files(project: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (project / NPY_DIR).glob("*.npy")}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    project = with_wavs(make_project(tmp_path_factory.mktemp("npy") / "project", vcs=False))
    return project, wav_to_npy(project)


def test_default_run_converts_every_wav(default_run):
    project, proc = default_run
    assert proc.returncode == 0, proc.stderr
    assert n_to_compute(proc) == len(SONGS)
    assert sorted(npy_files(project)) == sorted(f"{i}.npy" for i in SONGS)
    assert not list((project / NPY_DIR).glob(".*.tmp"))


@pytest.mark.parametrize("song_id", list(SONGS))
def test_default_scale_is_int16_over_32768_exactly(default_run, song_id):
    project, _ = default_run
    x = np.load(project / NPY_DIR / f"{song_id}.npy")
    wav = project / WAV_DIR / f"{song_id}.wav"
    pcm = audio.read(wav, "int16")[0][:, 0]
    assert x.dtype == np.float32 and x.shape == (audio.info(wav).frames,) == pcm.shape
    assert np.array_equal(x, pcm.astype(np.float32) / np.float32(32768))
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(x * 32768, pcm)  # lossless: exactly the inverse of decode's int16


def test_default_scale_maps_the_int16_range_onto_minus_one_to_one(default_run):
    project, _ = default_run
    x = np.load(project / NPY_DIR / "00000000000000aa.npy")
    assert (x[0], x[32768], x[-1]) == (-1.0, 0.0, np.float32(32767 / 32768))
    assert len(np.unique(x)) == 65536  # every int16 value stays distinct


def test_a_new_sample_rate_recomputes_every_song(proj):
    # decode writes the same song ids at the new rate: only the stamp tells the arrays are stale
    assert wav_to_npy(proj).returncode == 0
    set_params(proj / "params.yaml", {"decode.sample_rate": 22050})
    proc = wav_to_npy(proj)
    assert proc.returncode == 0, proc.stderr
    assert n_to_compute(proc) == len(SONGS)


def test_seed_scale_32767_recomputes_every_song(proj):
    assert wav_to_npy(proj).returncode == 0
    set_params(proj / "params.yaml", {"wav_to_npy.scale": 32767})
    proc = wav_to_npy(proj)
    assert proc.returncode == 0, proc.stderr
    assert n_to_compute(proc) == len(SONGS)  # the stamp changed, nothing old is reused
    for song_id, pcm in SONGS.items():
        x = np.load(proj / NPY_DIR / f"{song_id}.npy")
        assert x.dtype == np.float32 and x.shape == pcm.shape
        assert np.array_equal(x, pcm.astype(np.float32) / np.float32(32767))
    full = np.load(proj / NPY_DIR / "00000000000000aa.npy")
    assert full[-1] == 1.0 and full[0] < -1  # as documented: the seed's -32768 lands below -1


def test_unchanged_wavs_are_not_converted_again_and_removed_ones_are_pruned(proj):
    assert wav_to_npy(proj).returncode == 0
    before = npy_files(proj)
    leftover = proj / NPY_DIR / ".00000000000000aa.npy.4242.tmp"  # from a killed run
    leftover.write_bytes(b"\x93NUMPY")
    again = wav_to_npy(proj)
    assert again.returncode == 0 and n_to_compute(again) == 0, again.stderr
    assert npy_files(proj) == before and not leftover.exists()

    (proj / WAV_DIR / "00000000000000bb.wav").unlink()
    pruned = wav_to_npy(proj)
    assert pruned.returncode == 0 and n_to_compute(pruned) == 0, pruned.stderr
    assert "1 removed" in pruned.stderr
    assert npy_files(proj) == {k: v for k, v in before.items() if k.startswith("00000000000000aa")}


def test_reads_what_decode_writes(proj):
    raw = proj / "data" / "raw"
    write_song(raw / "song.mp3", 3, 1.0, rate=48000)
    decoded = run_stage("decode", ["--raw", str(raw), "--out", WAV_DIR, "--manifest",
                                   "data/interim/manifest.parquet"], cwd=proj, check=False)
    assert decoded.returncode == 0, decoded.stderr
    proc = wav_to_npy(proj)
    assert proc.returncode == 0, proc.stderr
    (wav,) = (proj / WAV_DIR).glob("*.wav")  # decode replaced the hand-written WAVs
    x = np.load(proj / NPY_DIR / f"{wav.stem}.npy")
    assert sorted(npy_files(proj)) == [f"{wav.stem}.npy"]
    assert x.shape == (audio.info(wav).frames,) and x.shape[0] > 0.95 * RATE
    assert np.array_equal(x, audio.read(wav, "int16")[0][:, 0] / np.float32(32768))


@pytest.mark.parametrize("value, says", [
    ("abc", "must be int or float, got 'abc'"),
    (100, "is 100; allowed values are 32768, 32767"),
    (None, "has no value for"),
], ids=["not a number", "not allowed", "missing"])
def test_bad_scale_fails_with_one_sentence_naming_the_key(proj, value, says):
    if value is None:
        drop_param(proj / "params.yaml", "wav_to_npy.scale")
    else:
        set_params(proj / "params.yaml", {"wav_to_npy.scale": value})
    assert_one_line_error(wav_to_npy(proj), "'wav_to_npy.scale'", says)
    assert not (proj / NPY_DIR).exists()


def test_bad_settings_of_later_stages_do_not_stop_it(proj):
    """A wrong fft_blocks value stops fft_blocks; the arrays before it are still made and kept."""
    set_params(proj / "params.yaml", {"fft_blocks.fft": "dct", "fft_blocks.block_size": "big"})
    proc = wav_to_npy(proj)
    assert proc.returncode == 0 and n_to_compute(proc) == len(SONGS), proc.stderr


def test_no_wavs_fails_with_one_sentence_naming_the_folder(proj):
    (proj / "empty").mkdir()
    assert_one_line_error(wav_to_npy(proj, "empty"), "'empty'", "run the earlier stages first")
    assert not (proj / NPY_DIR).exists()
