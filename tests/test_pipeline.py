"""The preprocessing pipeline through real `dvc repro` in a tmp git + DVC repo: caching, no-op
re-runs, adding/removing/renaming one song, kill -9 mid-run, and user errors as one sentence."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.tensor_files import Tensors
from tests.conftest import env, run, set_params, write_song

pytestmark = pytest.mark.slow

OUTPUT_DIRS = ("data/interim/wav", "data/interim/npy", "data/interim/fft", "data/processed")


def repro(project: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(["dvc", "repro", "tensors"], project, check)


def output_files(project: Path) -> list[Path]:
    """Every file in the output folders and their sub-folders (hidden bookkeeping included)."""
    return sorted(f for folder in OUTPUT_DIRS for f in (project / folder).rglob("*") if f.is_file())


def snapshot(project: Path) -> dict[str, bytes]:
    """Every output file's bytes, by path."""
    return {str(f.relative_to(project)): f.read_bytes() for f in output_files(project)}


def mtimes(folder: Path) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}


def song_ids(project: Path) -> set[str]:
    m = pd.read_parquet(project / "data/interim/manifest.parquet")
    return set(m.loc[m.status == "ok", "id"])


def three_songs(raw: Path) -> None:
    write_song(raw / "one.mp3", 1, 2.5)
    write_song(raw / "two.flac", 2, 2.0, rate=48000, subtype="PCM_24")
    write_song(raw / "sub dir" / "three.wav", 3, 1.5, rate=22050, channels=1)


def test_repro_builds_tensors_then_second_run_is_a_no_op(project, raw):
    three_songs(raw)
    first = repro(project)
    assert "Running stage 'tensors'" in first.stdout
    tensors = Tensors(project / "data/processed", "music")
    x, val_x = tensors.read("x"), tensors.read("val_x")
    assert x.shape[1:] == (8, 1025) and val_x.shape[1:] == (8, 1025)   # frames of 2048 samples
    assert x.shape[0] >= 1 and val_x.shape[0] >= 1       # three songs: both splits exist
    assert len(song_ids(project)) == 3
    before = {str(f): f.stat().st_mtime_ns for f in output_files(project)}
    second = repro(project)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout
    assert {str(f): f.stat().st_mtime_ns for f in output_files(project)} == before


def test_adding_renaming_and_removing_a_song_touches_only_that_song(project, raw):
    three_songs(raw)
    repro(project)
    old_ids = song_ids(project)
    songs = project / "data/processed/songs"
    kept = mtimes(songs)
    write_song(raw / "four.ogg", 4, 2.0, rate=48000)
    added = repro(project)
    assert "3 already done" in added.stderr and "1 to decode" in added.stderr
    assert added.stderr.count("1 to compute") == 3      # wav_to_npy, fft_blocks and tensors
    new_id, = song_ids(project) - old_ids
    for folder, suffix in zip(OUTPUT_DIRS[:3], (".wav", ".npy", ".npy")):
        assert (project / folder / f"{new_id}{suffix}").is_file()
    now = mtimes(songs)                                 # the tensors wrote that song's files only
    assert {k: v for k, v in now.items() if k in kept} == kept
    assert set(now) - set(kept) == {f"{new_id}_{part}.npy" for part in ("x", "y", "stats")}
    tensors = Tensors(project / "data/processed", "music")
    assert new_id in tensors.song_ids()
    assert "Data and pipelines are up to date" in repro(project).stdout

    (raw / "four.ogg").rename(raw / "renamed four.ogg")
    renamed = repro(project)
    assert "0 to decode" in renamed.stderr
    assert "Running stage 'wav_to_npy'" not in renamed.stdout   # same content: nothing downstream
    assert mtimes(songs) == now                  # the stage re-ran for the manifest: no song redone

    (raw / "renamed four.ogg").unlink()
    removed = repro(project)
    assert removed.stderr.count("0 to compute, 1 removed") == 3   # and the tensors' files
    assert song_ids(project) == old_ids
    for folder, suffix in zip(OUTPUT_DIRS[:3], (".wav", ".npy", ".npy")):
        assert not (project / folder / f"{new_id}{suffix}").exists()
    assert not list(songs.glob(f"{new_id}_*")) and mtimes(songs) == kept
    index = pd.read_parquet(project / "data/processed/music_index.parquet")
    assert set(index.song_id) == old_ids
    assert "Data and pipelines are up to date" in repro(project).stdout


def test_changing_block_size_gives_new_shapes_without_decoding_again(project, raw):
    set_params(project / "params.yaml", {"fft_blocks.fft": "rfft"})     # blocks of any size
    three_songs(raw)
    repro(project)
    set_params(project / "params.yaml", {"fft_blocks.block_size": 1024})
    out = repro(project)
    assert "0 to decode" in out.stderr and "Running stage 'fft_blocks'" in out.stdout
    assert Tensors(project / "data/processed", "music").shape() == (8, 1024)
    for f in (project / "data/interim/fft").glob("*.npy"):
        assert np.load(f, mmap_mode="r").shape[1] == 1024

    set_params(project / "params.yaml", {"fft_blocks.block_size": 80000})   # 1.8 s: too long
    out = repro(project)                                                     # for the 1.5 s song
    assert "0 to decode" in out.stderr and "three.wav is shorter than one block" in out.stderr
    assert len(song_ids(project)) == 2
    set_params(project / "params.yaml", {"fft_blocks.block_size": 2048})    # back: decoded again
    out = repro(project)
    assert "1 to decode" in out.stderr and len(song_ids(project)) == 3


def started(folder: str, n: int = 1):
    """A kill condition: `folder` holds at least `n` files (finished or half-written)."""
    return lambda project: (project / folder).is_dir() and len(list((project / folder).iterdir())) >= n


@pytest.mark.parametrize("when", [started("data/interim/wav", 3), started("data/interim/fft", 2),
                                  started("data/processed/songs", 2)], ids=["decode", "fft", "tensors"])
def test_kill_9_mid_run_then_repro_gives_identical_outputs(project, raw, tmp_path, when):
    for i in range(6):
        write_song(raw / f"song {i}.mp3", 10 + i, 4.0)
    proc = subprocess.Popen(["dvc", "repro", "tensors"], cwd=project, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not when(project) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)                 # dvc, the stage and its pool workers
    proc.wait()
    for folder in OUTPUT_DIRS:                          # nothing half-written under a real name
        for f in (project / folder).rglob("*.npy") if (project / folder).is_dir() else []:
            np.load(f, mmap_mode="r")
    run(["dvc", "repro", "tensors"], project)
    resumed = snapshot(project)

    clean = tmp_path / "clean"
    run(["git", "clone", "-q", str(project), str(clean)], tmp_path)
    os.symlink(raw, clean / "data" / "raw")
    run(["dvc", "repro", "tensors"], clean)
    reference = snapshot(clean)
    assert resumed.keys() == reference.keys()
    assert [k for k in resumed if resumed[k] != reference[k]] == []
    assert not [k for k in resumed if Path(k).name.endswith(".tmp")]


def test_no_usable_audio_fails_with_one_sentence_and_keeps_the_manifest(project, raw):
    (raw / "notes.txt").write_text("not music")
    (raw / "empty.mp3").write_bytes(b"")
    out = repro(project, check=False)
    assert out.returncode != 0
    assert "error: No usable audio in 'data/raw': all 2 files were skipped" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    manifest = pd.read_parquet(project / "data/interim/manifest.parquet")
    assert sorted(manifest.reason) == ["empty.mp3 is empty.", "notes.txt is not a readable audio file."]


def test_unknown_fft_value_stops_dvc_with_one_sentence(project, raw):
    three_songs(raw)
    set_params(project / "params.yaml", {"fft_blocks.fft": "dct"})
    out = repro(project, check=False)
    assert out.returncode != 0
    assert "error: params.yaml 'fft_blocks.fft' is 'dct'; allowed values are 'rfft', 'full', 'frames'." in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert len(list((project / "data/interim/npy").glob("*.npy"))) == 3   # earlier work is kept


def test_hostile_folder_and_file_names_are_data_never_shell(project):
    """A music folder and file names with spaces, quotes, `$(...)` and unicode: every song is
    processed, and nothing in a name is ever run by a shell."""
    folder = project / "my music $(touch PWNED-dir) 'n' \"more\""
    names = ["$(touch PWNED-file).mp3", "it's \"quoted\" `touch PWNED-tick`.flac",
             "ünïcødé ♪ song.wav", "; touch PWNED-semi; .wav"]
    for seed, name in enumerate(names, 1):
        write_song(folder / name, seed, 1.5)
    set_params(project / "params.yaml", {"data.raw_dir": str(folder)})
    repro(project)
    m = pd.read_parquet(project / "data/interim/manifest.parquet")
    assert sorted(m["path"]) == sorted(names) and set(m["status"]) == {"ok"}
    assert not list(project.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
