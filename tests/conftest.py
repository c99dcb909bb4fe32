"""Shared fixtures: real audio files in real formats (made by the demo's own generator at tiny sizes),
a copy of the project in a tmp dir (a real git + DVC repository, or a plain folder for stages run
directly), helpers to run the CLIs and to check that a failure is one sentence."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows import services
from stages import audio, synth
from stages.tensor_files import Tensors

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The files whose tests take longest on 2 cores, longest first (worker-seconds in one run of the
# suite: retrain ~320, train ~220, pipeline ~160, ui ~140, generate ~130, flows ~75, scale-out ~35).
# `make test` hands out whole files in collection order (--dist loadfile --no-loadscope-reorder);
# starting these first keeps a long file from starting while the other worker is nearly done.
LONGEST_FIRST = ("test_retrain.py", "test_train.py", "test_pipeline.py", "test_ui.py",
                 "test_generate.py", "test_flows.py", "test_scale_out.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable: a file's own
                                                                           # order is kept


# Small but real settings: a few blocks per second, short sequences.
SMALL_PARAMS = {"decode.sample_rate": 44100, "fft_blocks.block_size": 2048, "fft_blocks.hop": 512,
                "tensors.max_seq_len": 8,
                "preprocess.workers": 2, "codebook.codes": 16, "codebook.iterations": 5,
                "generate.seed_blocks": 4, "generate.griffin_lim_iters": 4}
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
    """The product's own wait (flows.services), failing the test with the tail of `log`."""
    try:
        services.wait_until_serving(url, proc, timeout_s)
    except services.DidNotStart as err:
        tail = log.read_text()[-2000:] if log and log.is_file() else ""
        raise AssertionError(f"{err}:\n{tail}") from None


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_stage(module: str, args: list[str], cwd: Path, check: bool = True):
    return run([sys.executable, "-m", f"stages.{module}", *args], cwd, check)


def _parent(params: dict, key: str) -> tuple[dict, str]:
    """The section holding the dotted `key`, and the key's last part."""
    *parents, last = key.split(".")
    for part in parents:
        params = params[part]
    return params, last


def set_params(params_file: Path, updates: dict) -> None:
    params = yaml.safe_load(params_file.read_text())
    for key, value in updates.items():
        node, last = _parent(params, key)
        node[last] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def drop_param(params_file: Path, key: str) -> None:
    """Remove the dotted `key` from a params file, as a user who deleted its line would."""
    params = yaml.safe_load(params_file.read_text())
    node, last = _parent(params, key)
    del node[last]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def assert_clean_output(proc) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


def assert_one_line_error(proc, *fragments: str) -> str:
    """Exit 1, and all of stderr is one `error: ...` sentence holding each fragment; returns it."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert_clean_output(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and line.endswith("."), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def save_tensors(folder: Path, x: np.ndarray, y: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, mean: np.ndarray | None = None, var: np.ndarray | None = None,
                 name: str = "music", per_song: int = 3) -> Tensors:
    """Tensors in the stage's layout from whole splits given by hand: each split cut into songs
    of `per_song` sequences (so a reader crosses song files), their index, mean and var."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from stages.tensors import INDEX_SCHEMA
    tensors = Tensors(folder, name)
    tensors.songs_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, xs, ys in (("train", x, y), ("val", val_x, val_y)):
        for first in range(0, len(xs), per_song):
            song_id = f"{split}{first:06d}"
            for part, arr in (("x", xs), ("y", ys)):
                np.save(tensors.song_path(song_id, part), arr[first:first + per_song])
            rows += [dict(split=split, seq=first + k, song_id=song_id, start_block=0, row=k)
                     for k in range(len(xs[first:first + per_song]))]
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), tensors.index_path)
    n_feat = x.shape[-1]
    np.save(tensors.path("mean"), np.zeros(n_feat, np.float32) if mean is None else mean)
    np.save(tensors.path("var"), np.ones(n_feat, np.float32) if var is None else var)
    return tensors


def write_song(path: Path, seed: int, seconds: float = 2.0, rate: int = 44100, channels: int = 2,
               fmt: str | None = None, subtype: str | None = None) -> Path:
    """A short synthetic song written in a real format (chosen from the suffix unless given);
    the same arguments always give the same bytes (an Ogg stream's serial is the seed)."""
    song = audio.resample(synth.make_song(seed, seconds), 44100, rate)
    if channels == 1:
        song = song.mean(axis=1)
    elif channels > 2:
        song = np.tile(song, (1, (channels + 1) // 2))[:, :channels]
    return audio.write(path, song, rate, fmt, subtype, ogg_serial=seed)


def make_project(repo: Path, updates: dict | None = None, vcs: bool = True,
                 small: bool = True) -> Path:
    """A fresh copy of the project with no songs yet: params.yaml with SMALL_PARAMS (unless not
    `small`) and then `updates`; in a real git + DVC repo, or with `vcs=False` in a plain folder
    (cheap: enough for a stage run directly, which never uses git or DVC)."""
    repo.mkdir(parents=True)
    for name in ("stages", "dvc.yaml", "params.yaml", ".gitignore", "data"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns(
                "__pycache__", "raw", "interim", "processed", "codebook", "generated"))
        else:
            shutil.copy(src, repo / name)
    (repo / "data" / "interim").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "data" / "interim" / ".gitignore", repo / "data" / "interim" / ".gitignore")
    set_params(repo / "params.yaml", {**(SMALL_PARAMS if small else {}), **(updates or {})})
    if not vcs:
        return repo
    for name in (".git", ".dvc", ".dvcignore"):   # `git init` + `dvc init`, made once
        src = empty_repo() / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "project"], repo)
    return repo


@functools.lru_cache(maxsize=None)
def empty_repo() -> Path:
    """A real `git init` + `dvc init` with nothing in it, made once per test process: every
    project's .git and .dvc are copies of it (the two inits cost ~1.5 s a project)."""
    repo = Path(tempfile.mkdtemp(prefix="rawtune-empty-repo-"))
    atexit.register(shutil.rmtree, repo, True)
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "test@localhost"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    return repo


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A plain copy of the project (no git, no DVC) for tests that run one stage directly."""
    return make_project(tmp_path / "project", vcs=False)


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


# --- the flows' tests (tests/test_flows.py, test_retrain.py, test_scale_out.py) -------------------

FLOW_PARAMS = {**TINY_TRAIN, "generate.seconds": 2, "generate.n_songs": 2,
               "evaluate.reference_seconds": 3, "flows.retries": 3, "flows.retry_delay_s": 1}


@pytest.fixture(scope="module")
def prefect_api():
    """Prefect's test harness: a throw-away API and database, no server to start by hand; on a
    loaded machine it may take the product's own start-up timeout, not the harness's 30 s."""
    from flows.project import load_params, startup_timeout
    from prefect.testing.utilities import prefect_test_harness
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with prefect_test_harness(server_startup_timeout=startup_timeout(load_params(ROOT))):
        yield


def flow_project(path: Path, updates: dict | None = None) -> Path:
    """Three songs in formats whose encoders are deterministic (an OGG's stream serial is
    random), so song ids, and with them the validation split, are the same on every run."""
    project = make_project(path, {**FLOW_PARAMS, **(updates or {})})
    raw = project / "data" / "raw"
    write_song(raw / "one.mp3", 1, 3.0)
    write_song(raw / "two.flac", 2, 3.0, rate=48000, subtype="PCM_24")
    write_song(raw / "three.wav", 3, 3.0)
    return project


def cli_env(prefect_home: Path) -> dict:
    """A user's shell: no Prefect server (the flows start Prefect's temporary API), a Prefect home
    of its own (the first start also creates its database, the slowest start there is)."""
    e = dict(env(), PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    e.pop("PREFECT_API_URL", None)
    return e


def burners(n: int, seconds: float) -> list[subprocess.Popen]:
    """`n` processes that keep a core busy and stop by themselves after `seconds`."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]
