"""Stage `decode` on real files through its real command line: the format matrix, recognition by
content, the bad-input matrix (DESIGN.md "Bad input"), clean failures, incremental runs, bad params.

Every test runs `python -m stages.decode` in a plain copy of the project (conftest's `proj`, or
`make_project(..., vcs=False)`: params.yaml with conftest.SMALL_PARAMS, so block_size = 2048, and
no git/DVC repository, which decode does not use); that makes it cheap enough to decode a whole
matrix once per module and check it file by file.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import audio, synth
from tests.conftest import (assert_clean_output, assert_one_line_error, drop_param, make_project,
                            run_stage, set_params, write_song)

RATE = 44100  # decode.sample_rate in params.yaml
WAV_DIR = "data/interim/wav"
MANIFEST = "data/interim/manifest.parquet"
LSB = 1 / 32768
MP3_FRAME = 1152  # samples per MPEG-1 Layer III frame


# --- helpers ----------------------------------------------------------------------------------

def decode(project: Path, raw: Path):
    return run_stage("decode", ["--raw", str(raw), "--out", WAV_DIR, "--manifest", MANIFEST],
                     cwd=project, check=False)


def manifest(project: Path) -> pd.DataFrame:
    return pd.read_parquet(project / MANIFEST)


def row_of(m: pd.DataFrame, path: str) -> pd.Series:
    rows = m[m.path == path]
    assert len(rows) == 1, f"{path!r} has {len(rows)} manifest rows:\n{m[['path', 'status']]}"
    return rows.iloc[0]


def wav_of(project: Path, row: pd.Series) -> Path:
    return project / WAV_DIR / f"{row.id}.wav"


def wav_files(project: Path) -> dict[str, int]:
    """Finished WAVs (not hidden) -> mtime_ns."""
    return {p.name: p.stat().st_mtime_ns for p in (project / WAV_DIR).glob("*.wav")
            if not p.name.startswith(".")}


def n_to_decode(proc) -> int:
    found = re.findall(r": (\d+) to decode, ", proc.stderr)
    assert len(found) == 1, proc.stderr
    return int(found[0])


def read_decoded(path: Path) -> np.ndarray:
    info = audio.info(path)
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, RATE)
    return audio.read(path, "int16")[0][:, 0].astype(np.float64) / 32768


def assert_sentence_about(reason: str, name: str) -> None:
    """One sentence on one line that starts by naming the file."""
    assert reason.startswith(f"{name} "), reason
    assert reason.endswith(".") and "\n" not in reason and "Traceback" not in reason, reason
    assert ". " not in reason[len(name):], f"more than one sentence: {reason!r}"


def assert_succeeded_with_wavs_for_ok_rows(project: Path, proc) -> pd.DataFrame:
    """Exit 0, no traceback, and exactly the `ok` songs have a finished WAV; returns the manifest."""
    assert proc.returncode == 0, proc.stderr
    assert_clean_output(proc)
    m = manifest(project)
    assert set(wav_files(project)) == {f"{i}.wav" for i in m.loc[m.status == "ok", "id"]}
    return m


def tone(freq: float, seconds: float, rate: int, amp: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# --- 1 + 2: the format matrix and recognition by content ---------------------------------------

# name, seed, rate, channels, container, subtype
FORMATS = [
    ("mp3 44k stereo.mp3", 0, 44100, 2, "MP3", None),
    ("mp3 48k stereo.mp3", 1, 48000, 2, "MP3", None),
    ("flac 24bit 48k.flac", 2, 48000, 2, "FLAC", "PCM_24"),
    ("vorbis 48k.ogg", 3, 48000, 2, "OGG", "VORBIS"),
    ("wav 16bit 44k mono.wav", 4, 44100, 1, "WAV", "PCM_16"),
    ("wav 24bit 48k.wav", 5, 48000, 2, "WAV", "PCM_24"),
    ("wav float 22k.wav", 6, 22050, 2, "WAV", "FLOAT"),
    ("wav 8bit.wav", 7, 44100, 2, "WAV", "PCM_U8"),
    ("wav 6ch.wav", 8, 44100, 6, "WAV", "PCM_16"),
    ("aiff 16bit.aiff", 9, 44100, 2, "AIFF", "PCM_16"),
    # recognised by content, not by name: the suffix lies or is missing
    ("mp3 named as.wav", 10, 44100, 2, "MP3", None),
    ("mp3 without suffix", 11, 48000, 2, "MP3", None),
    ("flac named as.mp3", 12, 44100, 2, "FLAC", "PCM_16"),
]
SONG_SECONDS = 1.0
TONE_HZ, TONE_AMP, TONE_RATE = 1000.0, 0.5, 48000


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """One decode run over every format plus two stereo tone files; returns (project, raw, proc)."""
    project = make_project(tmp_path_factory.mktemp("matrix") / "project", vcs=False)
    raw = project / "data" / "raw"
    for name, seed, rate, channels, fmt, subtype in FORMATS:
        write_song(raw / name, seed, SONG_SECONDS, rate, channels, fmt=fmt, subtype=subtype)
    t = tone(TONE_HZ, SONG_SECONDS, TONE_RATE, TONE_AMP)
    audio.write(raw / "tone opposite phase.wav", np.stack([t, -t], axis=1), TONE_RATE,
                subtype="FLOAT")
    audio.write(raw / "tone left only.wav", np.stack([t, np.zeros_like(t)], axis=1), TONE_RATE,
                subtype="FLOAT")
    proc = decode(project, raw)
    return project, raw, proc


def test_matrix_run_succeeds_with_one_row_per_file(matrix):
    project, raw, proc = matrix
    m = assert_succeeded_with_wavs_for_ok_rows(project, proc)
    assert sorted(m.path) == sorted(p.name for p in raw.iterdir())
    assert n_to_decode(proc) == len(FORMATS) + 2
    assert not list((project / WAV_DIR).glob(".*.tmp"))
    assert m.id.is_unique and m.id.str.fullmatch(r"[0-9a-f]{16}").all()


@pytest.mark.parametrize("name, seed, rate, channels, fmt, subtype", FORMATS,
                         ids=[f[0] for f in FORMATS])
def test_format_decodes_to_mono_16bit_at_pipeline_rate(matrix, name, seed, rate, channels, fmt,
                                                       subtype):
    project, raw, _ = matrix
    row = row_of(manifest(project), name)
    assert (row.status, row.reason) == ("ok", "")
    assert (row.sample_rate_in, row.channels_in) == (rate, channels)
    out = read_decoded(wav_of(project, row))  # asserts WAV, PCM_16, mono, 44100 Hz

    # Duration. Lossless and Vorbis (exact granule positions) keep every frame; resampling may
    # round by one. MP3 adds encoder delay and padding to whole 1152-sample frames; libsndfile
    # removes them using the LAME header, but allow two frames in case it could not.
    tolerance = 2 * MP3_FRAME if fmt == "MP3" else 1
    assert abs(row.seconds - SONG_SECONDS) <= tolerance / rate
    assert abs(len(out) - SONG_SECONDS * RATE) <= tolerance

    # Content 1: the input file as libsndfile reads it, mean of channels, resampled in one go
    # (audio.resample). The stage streams the same thing chunk by chunk and rounds to int16, so
    # the two agree to a few LSB (measured: under 1 LSB); a wrong channel mix or resampler breaks
    # this.
    expected, file_rate = audio.read_mono(raw / name, "float32")
    assert file_rate == rate
    expected = audio.resample(expected, rate, RATE)
    n = min(len(out), len(expected))
    assert abs(len(out) - len(expected)) <= 1
    assert np.abs(out[:n] - expected[:n]).max() < 8 * LSB

    # Content 2: the synthetic song before it was encoded. Measured >= 0.998 for every format
    # (lossy codecs at libsndfile's default quality, 22.05 kHz band limit); the same song shifted
    # by a single sample already scores 0.992, so 0.995 also proves the decoder adds no delay.
    original = synth.make_song(seed, SONG_SECONDS).mean(axis=1)
    assert corr(out, original) > 0.995


def test_mono_is_the_mean_so_opposite_channels_cancel_to_silence(matrix):
    project, _, _ = matrix
    row = row_of(manifest(project), "tone opposite phase.wav")
    assert row.status == "skipped"
    assert_sentence_about(row.reason, "tone opposite phase.wav")
    assert "is silent" in row.reason and "decode.silence_dbfs" in row.reason
    assert (row.sample_rate_in, row.channels_in, row.seconds) == (TONE_RATE, 2, SONG_SECONDS)
    assert not wav_of(project, row).exists()


def test_mono_is_the_mean_so_one_silent_channel_halves_the_amplitude(matrix):
    project, _, _ = matrix
    row = row_of(manifest(project), "tone left only.wav")
    assert row.status == "ok"
    out = read_decoded(wav_of(project, row))
    assert len(out) == SONG_SECONDS * RATE
    middle = out[RATE // 10: -RATE // 10]  # away from the resampler's edges
    assert np.abs(middle).max() == pytest.approx(TONE_AMP / 2, rel=0.01)
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(TONE_AMP / 2 / np.sqrt(2), rel=0.01)
    assert dominant_hz(out, RATE) == pytest.approx(TONE_HZ, abs=2)  # 48 kHz -> 44.1 kHz kept pitch


# --- 3: the bad-input matrix, all in one folder and one run ------------------------------------

GOOD = ["good one.mp3", "good2.flac", "it's \"quoted\" $HOME.ogg", "Ünïcødé ñ 曲.flac",
        "a/same name.wav", "b/same name.wav"]
# file name -> what its one-sentence reason must say
BAD = {
    "notes.txt": "is not a readable audio file",
    "broken 'ü' \"x\" $y.mp3": "is not a readable audio file",
    "empty.mp3": "is empty",
    "short.wav": "is shorter than one block",
    "silence.flac": "is silent",
    "nan.wav": "contains NaN or infinite samples",
    "inf.wav": "contains NaN or infinite samples",
    "zz copy of good one.mp3": "has the same audio content as good one.mp3",
    "header says 1 Hz.wav": "has an implausible sample rate (1 Hz)",
}
NOT_UTF8 = os.fsdecode(b"latin-1 caf\xe9.wav")  # a name from an old archive: not valid UTF-8
NOT_UTF8_SHOWN = "latin-1 caf\ufffd.wav"
FULL_MP3_SECONDS = 2.0


def flipped(data: bytes, seed: int, n: int) -> bytes:
    """`n` random bytes in the middle half of `data` inverted (seeded)."""
    b = bytearray(data)
    for i in np.random.default_rng(seed).integers(len(b) // 4, 3 * len(b) // 4, n):
        b[i] ^= 0xFF
    return bytes(b)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Every kind of bad input beside good songs in one folder, decoded in one run."""
    project = make_project(tmp_path_factory.mktemp("bad") / "project", vcs=False)
    raw = project / "data" / "raw"
    for i, name in enumerate(GOOD):
        write_song(raw / name, 20 + i, SONG_SECONDS)
    (raw / "notes.txt").write_text("These are not the songs you are looking for.\n" * 40)
    (raw / "broken 'ü' \"x\" $y.mp3").write_bytes(b"ID3" + bytes(range(256)) * 8)
    (raw / "empty.mp3").touch()
    write_song(raw / "short.wav", 30, 0.02)  # 882 samples < one block of 2048
    audio.write(raw / "silence.flac", np.zeros((RATE, 2), np.int16), RATE)
    nan = np.full((RATE, 2), 0.1, np.float32)
    nan[RATE // 2, 1] = np.nan
    audio.write(raw / "nan.wav", nan, RATE, subtype="FLOAT")
    nan[RATE // 2, 1] = np.inf
    audio.write(raw / "inf.wav", nan, RATE, subtype="FLOAT")
    shutil.copy(raw / "good one.mp3", raw / "zz copy of good one.mp3")
    audio.write(raw / "header says 1 Hz.wav", np.full(3000, 0.1, np.float32), 1)
    shutil.copy(raw / "good2.flac", raw / NOT_UTF8)
    full = write_song(project / "full.mp3", 31, FULL_MP3_SECONDS).read_bytes()
    (raw / "truncated.mp3").write_bytes(full[: int(len(full) * 0.4)])
    (raw / "bit flipped.mp3").write_bytes(flipped(full, seed=0, n=200))
    (raw / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(64))
    write_song(raw / ".hidden" / "inside hidden folder.mp3", 32, SONG_SECONDS)
    proc = decode(project, raw)
    return project, raw, proc


def test_bad_inputs_never_stop_the_run(bad):
    project, raw, proc = bad
    m = assert_succeeded_with_wavs_for_ok_rows(project, proc)
    expected = set(GOOD) | set(BAD) | {NOT_UTF8_SHOWN, "truncated.mp3", "bit flipped.mp3"}
    assert set(m.path) == expected and len(m) == len(expected)  # one row each, hidden ones none
    assert not any(".hidden" in p or "DS_Store" in p for p in m.path)
    for reason in m.loc[m.status == "skipped", "reason"]:
        assert f"skipped: {reason}" in proc.stderr  # each reason is also logged, on its own line


@pytest.mark.parametrize("name", GOOD)
def test_good_songs_beside_bad_ones_are_decoded(bad, name):
    project, _, _ = bad
    row = row_of(manifest(project), name)
    assert (row.status, row.reason) == ("ok", "")
    out = read_decoded(wav_of(project, row))
    assert abs(row.seconds - SONG_SECONDS) <= 2 * MP3_FRAME / RATE  # see the format matrix
    assert abs(len(out) - SONG_SECONDS * RATE) <= 2 * MP3_FRAME
    assert corr(out, synth.make_song(20 + GOOD.index(name), SONG_SECONDS).mean(axis=1)) > 0.995


def test_same_name_in_two_folders_does_not_collide(bad):
    project, _, _ = bad
    m = manifest(project)
    a, b = row_of(m, "a/same name.wav"), row_of(m, "b/same name.wav")
    assert a.id != b.id and wav_of(project, a).is_file() and wav_of(project, b).is_file()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_file_gets_one_skipped_row_with_one_sentence(bad, name):
    project, _, _ = bad
    m = manifest(project)
    row = row_of(m, name)
    assert row.status == "skipped"
    assert_sentence_about(row.reason, name)
    assert BAD[name] in row.reason
    if name.startswith("zz copy"):  # a duplicate has its original's id (and WAV)
        assert row.id == row_of(m, "good one.mp3").id
    elif row.id:
        assert not wav_of(project, row).exists()


def test_file_name_that_is_not_utf8_is_skipped_with_a_sentence(bad):
    project, _, _ = bad
    row = row_of(manifest(project), NOT_UTF8_SHOWN)
    assert row.status == "skipped"
    assert_sentence_about(row.reason, NOT_UTF8_SHOWN)
    assert "not valid UTF-8" in row.reason


def test_truncated_mp3_keeps_its_decodable_start(bad):
    """40% of an MP3's bytes is still 40% of its frames: the stage keeps what decodes (a user's
    half-downloaded song is still music) and reports the shorter duration."""
    project, _, _ = bad
    row = row_of(manifest(project), "truncated.mp3")
    assert (row.status, row.reason) == ("ok", "")
    out = read_decoded(wav_of(project, row))
    assert row.seconds == pytest.approx(len(out) / RATE, abs=1 / RATE)
    # VBR: bytes are not exactly proportional to time (measured 0.34 of the song)
    assert 0.2 * FULL_MP3_SECONDS < row.seconds < 0.5 * FULL_MP3_SECONDS
    # and it is the song's beginning, sample-aligned (its last, partial frame left aside)
    original = synth.make_song(31, FULL_MP3_SECONDS).mean(axis=1)
    n = len(out) - MP3_FRAME
    assert corr(out[:n], original[:n]) > 0.995


def test_bit_flipped_mp3_never_crashes_and_never_yields_garbage(bad):
    project, _, _ = bad
    row = row_of(manifest(project), "bit flipped.mp3")
    if row.status == "skipped":
        assert_sentence_about(row.reason, "bit flipped.mp3")
        return
    assert row.reason == ""
    out = read_decoded(wav_of(project, row))
    assert np.isfinite(out).all() and np.abs(out).max() > 0.01  # not silent, not NaN
    assert row.seconds == pytest.approx(len(out) / RATE, abs=1 / RATE)
    assert abs(row.seconds - FULL_MP3_SECONDS) < 0.1  # mpg123 resyncs over the damage


def test_rerun_keeps_duplicates_original_and_names_renamed_bad_file(proj):
    """A second run must not swap a song for its duplicate (the duplicate's row came last in the
    old manifest) nor quote a renamed bad file under its old name."""
    raw = proj / "data" / "raw"
    write_song(raw / "original.flac", 40, SONG_SECONDS)
    shutil.copy(raw / "original.flac", raw / "the copy.flac")
    (raw / "notes.txt").write_text("not audio\n")
    first = decode(proj, raw)
    assert first.returncode == 0, first.stderr
    before = manifest(proj)
    wavs = wav_files(proj)
    assert row_of(before, "original.flac").status == "ok" and len(wavs) == 1

    (raw / "notes.txt").rename(raw / "renamed notes.txt")
    second = decode(proj, raw)
    assert second.returncode == 0, second.stderr
    assert n_to_decode(second) == 0
    after = manifest(proj)
    assert row_of(after, "original.flac").status == "ok"
    assert wav_files(proj) == wavs  # same WAV, not deleted, not rewritten
    assert row_of(after, "the copy.flac").reason == \
        "the copy.flac has the same audio content as original.flac."
    assert row_of(after, "renamed notes.txt").reason == \
        "renamed notes.txt is not a readable audio file."


# --- 4: failing cleanly ------------------------------------------------------------------------

def test_missing_folder_fails_with_one_sentence(proj):
    missing = proj / "data" / "no such folder"
    proc = decode(proj, missing)
    assert_one_line_error(proc, str(missing), "does not exist")
    assert not (proj / MANIFEST).exists()


def test_empty_folder_fails_with_one_sentence(proj):
    empty = proj / "data" / "empty"
    (empty / ".hidden").mkdir(parents=True)  # only hidden things: still empty for the user
    (empty / ".DS_Store").write_bytes(b"x")
    proc = decode(proj, empty)
    assert_one_line_error(proc, str(empty), "is empty")
    assert not (proj / MANIFEST).exists()


def test_folder_of_only_bad_files_fails_but_writes_the_manifest(proj):
    raw = proj / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("not audio\n")
    (raw / "empty.wav").touch()
    audio.write(raw / "silence.wav", np.zeros(RATE, np.int16), RATE)
    write_song(raw / "short.flac", 1, 0.01)
    proc = decode(proj, raw)
    assert proc.returncode == 1
    assert_clean_output(proc)
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]], proc.stderr  # exactly one, the last word; the rest is the log
    assert str(raw) in errors[0] and "No usable audio" in errors[0] and "all 4 files" in errors[0]
    assert all(line.startswith(("INFO ", "WARNING ")) for line in lines[:-1]), proc.stderr
    m = manifest(proj)
    assert sorted(m.path) == ["empty.wav", "notes.txt", "short.flac", "silence.wav"]
    assert (m.status == "skipped").all()
    for r in m.itertuples():
        assert_sentence_about(r.reason, r.path)
    assert wav_files(proj) == {}


def test_failed_run_keeps_the_previous_runs_outputs(proj):
    raw = proj / "data" / "raw"
    for i in range(2):
        write_song(raw / f"song {i}.ogg", 50 + i, SONG_SECONDS)
    assert decode(proj, raw).returncode == 0
    wavs, manifest_bytes = wav_files(proj), (proj / MANIFEST).read_bytes()
    assert len(wavs) == 2

    empty = proj / "data" / "empty"
    empty.mkdir()
    for folder in (empty, proj / "data" / "missing"):
        assert_one_line_error(decode(proj, folder), str(folder))
        assert wav_files(proj) == wavs  # same files, untouched
        assert (proj / MANIFEST).read_bytes() == manifest_bytes

    only_bad = proj / "data" / "only_bad"           # a folder with nothing usable: the manifest
    only_bad.mkdir()                                # says why, the earlier WAVs stay
    (only_bad / "notes.txt").write_text("not audio\n")
    proc = decode(proj, only_bad)
    assert proc.returncode == 1 and "No usable audio" in proc.stderr
    assert wav_files(proj) == wavs
    assert list(manifest(proj).reason) == ["notes.txt is not a readable audio file."]


# --- 5: incremental ----------------------------------------------------------------------------

def test_unchanged_and_renamed_songs_are_not_decoded_again(proj):
    raw = proj / "data" / "raw"
    for i in range(2):
        write_song(raw / f"song {i}.flac", 60 + i, SONG_SECONDS)
    first = decode(proj, raw)
    assert first.returncode == 0 and n_to_decode(first) == 2, first.stderr
    wavs, ids = wav_files(proj), dict(zip(manifest(proj).path, manifest(proj).id))

    second = decode(proj, raw)
    assert second.returncode == 0 and n_to_decode(second) == 0, second.stderr
    assert wav_files(proj) == wavs

    (raw / "song 0.flac").rename(raw / "renamed song.flac")
    third = decode(proj, raw)
    assert third.returncode == 0 and n_to_decode(third) == 0, third.stderr
    m = manifest(proj)
    assert sorted(m.path) == ["renamed song.flac", "song 1.flac"]
    assert row_of(m, "renamed song.flac").id == ids["song 0.flac"]  # the id is the content's
    assert row_of(m, "renamed song.flac").status == "ok"
    assert wav_files(proj) == wavs


def test_the_counts_say_what_was_decoded_known_and_skipped(proj):
    raw = proj / "data" / "raw"
    write_song(raw / "song.wav", 80, SONG_SECONDS)
    assert decode(proj, raw).returncode == 0
    (raw / "notes.mp3").write_text("not audio at all")        # decoded, then found not audio
    (raw / "empty.wav").touch()                               # skipped without decoding
    proc = decode(proj, raw)
    assert proc.returncode == 0
    assert ": 1 to decode, 1 already done, 1 skipped without decoding" in proc.stderr
    assert "1 songs ready" in proc.stderr and "2 skipped" in proc.stderr


def test_adding_decodes_only_the_new_song_and_removing_deletes_its_wav(proj):
    raw = proj / "data" / "raw"
    for i in range(2):
        write_song(raw / f"song {i}.wav", 70 + i, SONG_SECONDS)
    assert decode(proj, raw).returncode == 0
    wavs = wav_files(proj)

    write_song(raw / "new song.mp3", 72, SONG_SECONDS)
    added = decode(proj, raw)
    assert added.returncode == 0 and n_to_decode(added) == 1, added.stderr
    new_id = row_of(manifest(proj), "new song.mp3").id
    assert wav_files(proj) == {**wavs, f"{new_id}.wav": wav_files(proj)[f"{new_id}.wav"]}

    gone_id = row_of(manifest(proj), "song 0.wav").id
    (raw / "song 0.wav").unlink()
    removed = decode(proj, raw)
    assert removed.returncode == 0 and n_to_decode(removed) == 0, removed.stderr
    assert "1 removed" in removed.stderr
    assert sorted(manifest(proj).path) == ["new song.mp3", "song 1.wav"]
    assert f"{gone_id}.wav" not in wav_files(proj) and len(wav_files(proj)) == 2


def test_changing_the_sample_rate_decodes_everything_again(proj):
    raw = proj / "data" / "raw"
    for i in range(2):
        write_song(raw / f"song {i}.flac", 80 + i, SONG_SECONDS)
    assert decode(proj, raw).returncode == 0
    set_params(proj / "params.yaml", {"decode.sample_rate": 22050})
    again = decode(proj, raw)
    assert again.returncode == 0 and n_to_decode(again) == 2, again.stderr
    m = manifest(proj)
    assert (m.status == "ok").all()
    for r in m.itertuples():
        info = audio.info(proj / WAV_DIR / f"{r.id}.wav")
        assert (info.samplerate, info.frames, info.channels) == (22050, 22050, 1)


def test_leftover_temp_file_of_a_killed_run_is_removed(proj):
    raw = proj / "data" / "raw"
    write_song(raw / "song.flac", 90, SONG_SECONDS)
    assert decode(proj, raw).returncode == 0
    song_id = row_of(manifest(proj), "song.flac").id
    wav_dir = proj / WAV_DIR
    # what a run killed while writing leaves: a hidden, half-written <name>.<pid>.tmp
    leftovers = [wav_dir / f".{song_id}.wav.99999.tmp", wav_dir / ".0123456789abcdef.wav.4242.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"RIFF\0\0\0\0WAVE")
    proc = decode(proj, raw)
    assert proc.returncode == 0 and n_to_decode(proc) == 0, proc.stderr
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in wav_dir.iterdir()) == [".stamp.json", f"{song_id}.wav"]
    assert list(manifest(proj).path) == ["song.flac"]


# --- 6: bad params -----------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, says", [
    ("decode.sample_rate", "abc", "must be int, got 'abc'"),
    ("decode.sample_rate", None, "has no value for"),
    ("decode.sample_rate", 0, "must be at least 1000"),
    ("decode.silence_dbfs", "quiet", "must be int or float, got 'quiet'"),
], ids=["not a number", "missing", "too low", "silence not a number"])
def test_bad_param_fails_with_one_sentence_naming_the_key(proj, key, value, says):
    raw = proj / "data" / "raw"
    write_song(raw / "song.flac", 1, SONG_SECONDS)
    if value is None:
        drop_param(proj / "params.yaml", key)
    else:
        set_params(proj / "params.yaml", {key: value})
    line = assert_one_line_error(decode(proj, raw), f"'{key}'", says)
    assert line.startswith("error: params.yaml ")
    assert not (proj / WAV_DIR).exists() and not (proj / MANIFEST).exists()
