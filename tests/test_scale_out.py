"""Past one machine: the Dask executor's output against the local pool's, an unreachable
scheduler as one sentence, and tf.distribute's mirrored strategy against the default."""
from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import (FLOW_PARAMS, env, flow_project, free_port, make_project, run_stage,
                            set_params)

pytestmark = pytest.mark.slow

def preprocess(project: Path) -> None:
    run_stage("decode", ["--raw", "data/raw", "--out", "data/interim/wav", "--manifest",
                         "data/interim/manifest.parquet"], project)
    run_stage("wav_to_npy", [], project)
    run_stage("fft_blocks", [], project)
    run_stage("tensors", [], project)


def test_dask_executor_output_equals_the_local_one_byte_for_byte(tmp_path):
    local = flow_project(tmp_path / "local")
    dask = make_project(tmp_path / "dask", {**FLOW_PARAMS, "preprocess.executor": "dask"})
    shutil.copytree(local / "data" / "raw", dask / "data" / "raw")   # the same bytes (OGG
    for project in (local, dask):                                      # serials are random)
        preprocess(project)
    for folder in ("interim/wav", "interim/npy", "interim/fft", "processed/songs", "processed"):
        a, b = local / "data" / folder, dask / "data" / folder
        names = sorted(p.name for p in a.iterdir() if p.is_file())
        assert names == sorted(p.name for p in b.iterdir() if p.is_file()) and len(names) >= 3
        match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
        assert mismatch == [] and errors == [], (folder, mismatch, errors)
    cols = ["id", "status", "reason", "seconds", "frames", "peak_dbfs"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(local / "data/interim/manifest.parquet")[cols].sort_values("id", ignore_index=True),
        pd.read_parquet(dask / "data/interim/manifest.parquet")[cols].sort_values("id", ignore_index=True))


def test_an_unreachable_dask_scheduler_is_one_sentence(tmp_path):
    project = flow_project(tmp_path / "p", {"preprocess.executor": "dask",
                                            "preprocess.dask_address": f"tcp://127.0.0.1:{free_port()}",
                                            "preprocess.dask_timeout_s": 2})
    proc = run_stage("decode", ["--raw", "data/raw", "--out", "data/interim/wav", "--manifest",
                                "data/interim/manifest.parquet"], project, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: The Dask scheduler at 'tcp://127.0.0.1:")
    assert "cannot be reached within 2 s" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mirrored_strategy_trains_with_the_same_loss_curve(trained, tmp_path):
    """The shared project trained with the default strategy (`dvc repro train`); the same data
    and params with `train.strategy: mirrored`, into other files and another MLflow store, so
    the shared project is left as it was."""
    params = tmp_path / "params.yaml"
    params.write_text((trained / "params.yaml").read_text())
    set_params(params, {"train.strategy": "mirrored"})
    out = tmp_path / "mirrored"
    proc = subprocess.run([sys.executable, "-m", "stages.train", "--params", str(params),
                           "--models", str(out / "models"), "--metrics", str(out / "train.json"),
                           "--history", str(out / "history.csv"), "--plot", str(out / "curve.png")],
                          cwd=trained, capture_output=True, text=True,
                          env=dict(env(), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MirroredStrategy: 1 replica(s)" in proc.stderr
    a = pd.read_csv(trained / "metrics" / "train_history.csv")
    b = pd.read_csv(out / "history.csv")
    assert list(a["epoch"]) == list(b["epoch"]) == [1, 2, 3, 4]
    assert a["loss"].iloc[-1] < a["loss"].iloc[0] and b["loss"].iloc[-1] < b["loss"].iloc[0]
    assert b["loss"].to_numpy() == pytest.approx(a["loss"].to_numpy(), rel=0.02)
    assert b["val_loss"].to_numpy() == pytest.approx(a["val_loss"].to_numpy(), rel=0.02)


def test_zero_workers_and_threads_mean_the_cores_this_process_may_use():
    """Pinned to one core (taskset, a container's CPU set), `workers: 0` starts one process and
    training's free cores count one, whatever the machine has."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from stages import pool, train; print(pool.default_workers(0), train.free_cores(0.1), "
            "pool.default_workers(3))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["1", "1", "3"]
