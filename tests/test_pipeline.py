"""The preprocessing pipeline through real `dvc repro` in a tmp git + DVC repo: caching, no-op
re-runs, adding/removing/renaming one song, kill -9 mid-run, and user errors as one sentence."""
from __future__ import annotations

import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from stages.tensor_files import Tensors
from tests.conftest import BIN, env, make_project, run, set_params, write_song

pytestmark = pytest.mark.slow

OUTPUT_DIRS = ("data/interim/wav", "data/interim/npy", "data/interim/fft", "data/processed")


def repro(project: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(["dvc", "repro", "tensors"], project, check)


def output_files(project: Path) -> list[Path]:
    """Every file in the output folders and their sub-folders (hidden bookkeeping included)."""
    return sorted(f for folder in OUTPUT_DIRS if (project / folder).is_dir()
                  for f in (project / folder).rglob("*") if f.is_file())


def snapshot(project: Path) -> dict[str, bytes]:
    """Every output file's bytes, by path relative to the project, sub-folders and hidden
    bookkeeping files included."""
    return {f.relative_to(project).as_posix(): f.read_bytes() for f in output_files(project)}


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


# --- kill -9 at random moments -------------------------------------------------------------------

# name, seed, seconds, rate, channels, subtype: several containers so decode has real work
KILL_SONGS = [("one.mp3", 21, 3.0, 44100, 2, None), ("two.flac", 22, 2.5, 48000, 2, "PCM_24"),
              ("three.ogg", 23, 3.5, 44100, 2, None), ("sub dir/four.wav", 24, 2.0, 22050, 1, None),
              ("five.mp3", 25, 4.0, 48000, 1, None), ("six.flac", 26, 2.0, 44100, 2, "PCM_16")]
# beside the output folders: the manifest and the metrics are outputs a kill could spoil too
KILL_EXTRA_FILES = ("data/interim/manifest.parquet", "metrics/preprocess.json")


def kill_project(root: Path, songs: Path) -> Path:
    """A fresh project holding copies of `songs` (copied with their mtimes, so the manifest, which
    records them, is comparable byte for byte across projects)."""
    project = make_project(root)
    shutil.copytree(songs, project / "data" / "raw")
    return project


def outputs(project: Path) -> dict[str, bytes]:
    return {**snapshot(project), **{f: (project / f).read_bytes() for f in KILL_EXTRA_FILES}}


def leftover_tmp(project: Path) -> list[str]:
    """Hidden half-written files anywhere in the project but git's and DVC's own folders."""
    return sorted(p.relative_to(project).as_posix() for p in project.rglob(".*.tmp")
                  if not {".git", ".dvc"} & set(p.relative_to(project).parts))


def stage_running(pid: int) -> str | None:
    """The stage that `dvc repro` (process `pid`) is running right now, from its children's
    command lines (`python -m stages.<name>`), or None between stages."""
    for child in psutil.Process(pid).children(recursive=True):
        try:
            names = [a[len("stages."):] for a in child.cmdline() if a.startswith("stages.")]
        except psutil.Error:                       # ended meanwhile
            continue
        if names:
            return names[0]
    return None


def where_dvc_was(running: str | None, log: str) -> str:
    """Where a killed `dvc repro` was: in a stage's process, or else around the last stage it
    announced (starting it, or hashing and caching its outputs)."""
    if running:
        return f"in {running}"
    announced = re.findall(r"Running stage '(\w+)'", log)
    return f"in DVC around {announced[-1]}" if announced else "in DVC, before any stage"


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by process `pid` and everything under it: the living processes' own,
    and the finished ones', which their parents have collected."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:                       # ended meanwhile
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def kill_9_after(project: Path, cpu_target: float, log: Path) -> tuple[float, float, str]:
    """Start `dvc repro tensors` in its own session and SIGKILL the whole session (dvc, the
    stage, its pool workers) once they have used `cpu_target` CPU seconds: work done, not wall
    time, which stretches with whatever else the machine runs. Returns (seconds after start,
    CPU seconds used, where it was)."""
    with open(log, "w") as out:                    # unbuffered: the log is whole up to the kill
        t0 = time.monotonic()
        proc = subprocess.Popen(["dvc", "repro", "tensors"], cwd=project,
                                env=dict(env(), PYTHONUNBUFFERED="1"), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        used = 0.0
        while proc.poll() is None and used < cpu_target:
            time.sleep(0.01)
            used = cpu_seconds(proc.pid)
        running = stage_running(proc.pid) if proc.poll() is None else None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    where = (where_dvc_was(running, log.read_text()) if proc.returncode == -signal.SIGKILL
             else f"not killed: the run ended first, exit {proc.returncode}")
    return time.monotonic() - t0, used, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict[str, bytes], float]:
    """The songs, one uninterrupted `dvc repro tensors` over them: its outputs and the CPU
    seconds it took, shared by every seed."""
    root = tmp_path_factory.mktemp("kill")
    songs = root / "songs"
    for name, seed, seconds, rate, channels, subtype in KILL_SONGS:
        write_song(songs / name, seed, seconds, rate, channels, subtype=subtype)
    project = kill_project(root / "reference", songs)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    repro(project)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return songs, outputs(project), cpu


# Seeds whose moments spread over the run: 0 in tensors, 1 in decode and then later, 5 in
# fft_blocks (on the 2-core machine; the test says where each kill landed).
# DVC (3.67.1) rewrites dvc.lock and .dvc/tmp/rwlock in place (truncate, then write): a kill in
# that window, between two stages (3 kills in about 80), leaves an empty file and every later
# `dvc repro` stops. So the rerun is the product's documented one after a crash:
# `python -m flows.repair`, then `dvc repro` (the flows repair by themselves).
@pytest.mark.parametrize("seed, kills", [(0, 1), (1, 2), (5, 1)])
def test_kill_9_at_random_moments_then_repro_gives_identical_outputs(uninterrupted, tmp_path,
                                                                     seed, kills):
    """SIGKILL to `dvc repro tensors` and its stage's pool workers at random moments (decode,
    wav_to_npy, fft_blocks, tensors, mid-write or while DVC saves a stage), then `dvc repro
    tensors` again: every output is byte-identical to an uninterrupted run's, nothing
    half-written is left, and DVC sees nothing to do."""
    songs, reference, cpu_total = uninterrupted
    project = kill_project(tmp_path / "project", songs)
    rng = random.Random(seed)
    moments, work_left = [], cpu_total
    for k in range(kills):                         # a later kill: a moment of the work left
        # not past 0.8: a run's CPU time varies by some 15% with the load beside it
        target = rng.uniform(0.05, 0.8) * work_left
        seconds, used, where = kill_9_after(project, target, tmp_path / f"killed-{k}.log")
        moments.append(f"{seconds:.2f} s ({used:.2f} of {work_left:.2f} CPU s; {where})")
        work_left -= target
    when = "after kill -9 at " + ", then at ".join(moments)
    print(f"seed {seed}: {when}")

    repaired = run([sys.executable, "-m", "flows.repair"], project, check=False)
    assert repaired.returncode == 0, f"{when}, the repair failed:\n{repaired.stderr}"
    again = repro(project, check=False)
    said = f"{repaired.stdout}\n{again.stdout}\n{again.stderr}"
    assert again.returncode == 0, f"{when}, the rerun failed:\n{said}"
    assert "Traceback" not in said, f"{when}, the rerun printed a traceback:\n{said}"
    assert leftover_tmp(project) == [], f"{when}: half-written files left"
    resumed = outputs(project)
    assert sorted(resumed.keys() - reference.keys()) == [], f"{when}: files not in the reference"
    assert sorted(reference.keys() - resumed.keys()) == [], f"{when}: files missing"
    assert [f for f in reference if resumed[f] != reference[f]] == [], \
        f"{when}: files differ from the uninterrupted run's"
    status = run(["dvc", "status", "tensors"], project)
    assert "Data and pipelines are up to date" in status.stdout, f"{when}: {status.stdout}"


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


# --- dvc without the venv on PATH ----------------------------------------------------------------

def without_venv_env(tmp_path: Path) -> dict:
    """A shell where `python` is a Python without the project's libraries (no site-packages) and
    the venv is not on PATH: what `.venv/bin/dvc repro` meets when the venv is not activated."""
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    (bare / "python").write_text(f'#!/bin/sh\nexec "{sys._base_executable}" -S "$@"\n')
    (bare / "python").chmod(0o755)
    e = {k: v for k, v in env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    e["PATH"] = os.pathsep.join([str(bare)] + [p for p in os.environ["PATH"].split(os.pathsep)
                                               if Path(p).resolve() != BIN.resolve()])
    return e


def test_dvc_by_its_venv_path_runs_the_stages_in_the_projects_venv_or_says_how(project, raw,
                                                                                tmp_path):
    write_song(raw / "one.wav", 1, 1.0)
    shell = without_venv_env(tmp_path)
    dvc = [str(BIN / "dvc"), "repro", "decode"]
    no_venv = subprocess.run(dvc, cwd=project, env=shell, capture_output=True, text=True)
    assert no_venv.returncode != 0
    assert "Traceback" not in no_venv.stdout + no_venv.stderr
    ours = [line for line in no_venv.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and ours[0].endswith(
        "activate the project's environment: `source .venv/bin/activate` (`make setup` makes "
        "it), or use `make demo`."), no_venv.stderr
    assert not (project / "data/interim/manifest.parquet").exists()

    (project / ".venv").symlink_to(BIN.parent)              # the project's venv, as make setup
    with_venv = subprocess.run(dvc, cwd=project, env=shell, capture_output=True, text=True)
    assert with_venv.returncode == 0, with_venv.stderr
    assert len(song_ids(project)) == 1


def test_a_dvc_killed_while_writing_its_lock_files_is_repaired_in_one_command(project, raw):
    """DVC truncates, then writes dvc.lock and .dvc/tmp/rwlock: a kill -9 in between leaves them
    empty and every later `dvc` stops; `python -m flows.repair` puts that right, and the rerun
    changes no finished output."""
    write_song(raw / "one.wav", 1, 1.0)
    run(["dvc", "repro", "wav_to_npy"], project)
    before = snapshot(project)
    (project / "dvc.lock").write_text("")
    (project / ".dvc" / "tmp" / "rwlock").write_text("")
    stuck = run(["dvc", "repro", "wav_to_npy"], project, check=False)
    assert stuck.returncode != 0

    fixed = run([sys.executable, "-m", "flows.repair"], project)
    assert fixed.stdout.splitlines() == [
        "repaired: removed the unreadable .dvc/tmp/rwlock (DVC was killed while writing it).",
        "repaired: removed the empty dvc.lock (DVC was killed while writing it); every stage "
        "runs again, and finished songs are kept."]
    again = run(["dvc", "repro", "wav_to_npy"], project)
    assert "0 to decode" in again.stderr and "0 to compute" in again.stderr
    assert snapshot(project) == before
    assert run([sys.executable, "-m", "flows.repair"], project).stdout == "nothing to repair.\n"
