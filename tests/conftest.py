"""Shared fixtures: real audio files in real formats (made by the demo's own generator at tiny sizes),
a real git + DVC repository in a tmp dir with the project's stages, and helpers to run the CLIs."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from stages import synth

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small but real settings: a few blocks per second, short sequences.
SMALL_PARAMS = {"fft_blocks.block_size": 2048, "tensors.max_seq_len": 8, "preprocess.workers": 2}
# A tiny network that still learns something in a few seconds.
TINY_TRAIN = {"train.hidden": 16, "train.batch_size": 4, "train.epochs": 4, "train.patience": 0}


def env() -> dict:
    """The environment a user's shell would have after `make setup`: the venv first on PATH."""
    e = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(ROOT))
    e.pop("RAWTUNE_LOG", None)
    e.pop("MLFLOW_TRACKING_URI", None)   # each project uses its own store unless a test says so
    e["DVC_NO_ANALYTICS"] = "1"
    return e


def free_port() -> int:
    """A TCP port free on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, timeout_s: float = 120,
                       log: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail if `proc` exits first or time runs out."""
    import httpx
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer (exit {proc.poll()}):\n"
                                 + (log.read_text()[-2000:] if log and log.is_file() else ""))
        time.sleep(0.5)


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_stage(module: str, args: list[str], cwd: Path, check: bool = True):
    return run([sys.executable, "-m", f"stages.{module}", *args], cwd, check)


def set_params(params_file: Path, updates: dict) -> None:
    params = yaml.safe_load(params_file.read_text())
    for key, value in updates.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def write_song(path: Path, seed: int, seconds: float = 2.0, rate: int = 44100, channels: int = 2,
               fmt: str | None = None, subtype: str | None = None) -> Path:
    """A short synthetic song written in a real format (chosen from the suffix unless given)."""
    song = synth.resample_for_file(synth.make_song(seed, seconds), 44100, rate)
    if channels == 1:
        song = song.mean(axis=1)
    elif channels > 2:
        song = np.tile(song, (1, (channels + 1) // 2))[:, :channels]
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or {".mp3": "MP3", ".flac": "FLAC", ".ogg": "OGG", ".wav": "WAV"}[path.suffix.lower()]
    with sf.SoundFile(str(path), "w", rate, song.shape[1] if song.ndim == 2 else 1,
                      format=fmt, subtype=subtype) as f:
        for start in range(0, len(song), 1 << 14):
            f.write(song[start:start + (1 << 14)])
    return path


def make_project(repo: Path, updates: dict | None = None) -> Path:
    """A fresh copy of the project in a real git + DVC repo, with small params and no songs yet."""
    repo.mkdir(parents=True)
    for name in ("stages", "dvc.yaml", "params.yaml", ".gitignore", "data"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns(
                "__pycache__", "raw", "interim", "processed", "generated"))
        else:
            shutil.copy(src, repo / name)
    (repo / "data" / "interim").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "data" / "interim" / ".gitignore", repo / "data" / "interim" / ".gitignore")
    set_params(repo / "params.yaml", {**SMALL_PARAMS, **(updates or {})})
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "test@localhost"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "project"], repo)
    return repo


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def raw(project: Path) -> Path:
    folder = project / "data" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def three_songs(project: Path) -> None:
    raw = project / "data" / "raw"
    write_song(raw / "one.mp3", 1, 3.0)
    write_song(raw / "two.flac", 2, 3.0, rate=48000, subtype="PCM_24")
    write_song(raw / "three.ogg", 3, 3.0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """One project trained through `dvc repro train` with tiny params, shared by the checks
    of training and of what comes after it."""
    project = make_project(tmp_path_factory.mktemp("trained") / "project", TINY_TRAIN)
    three_songs(project)
    proc = run(["dvc", "repro", "train"], project)
    (project / "repro.log").write_text(proc.stdout + proc.stderr)
    return project
