"""The Prefect flows on real projects: the pipeline flow over real DVC stages, retries of a held
DVC lock, the retraining flow with champion promotion in a real sqlite MLflow registry, serving
the deployment on a real local Prefect server, and the Dask executor against the local one."""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from flows.pipeline import STAGES, RunInProgress, pipeline
from flows.retrain import retrain
from flows.services import stop_group
from stages.config import UserError
from tests.conftest import (BIN, ROOT, TINY_TRAIN, env, free_port, make_project, run, run_stage,
                            set_params, wait_until_serving, write_song)

pytestmark = pytest.mark.slow      # every test here runs real flows on real DVC projects

FLOW_PARAMS = {**TINY_TRAIN, "generate.seconds": 2, "generate.n_songs": 2,
               "evaluate.reference_seconds": 3, "flows.retries": 3, "flows.retry_delay_s": 1}


@pytest.fixture(scope="module", autouse=True)
def prefect_api(tmp_path_factory):
    """Prefect's test harness: a throw-away API and database, no server to start by hand."""
    from prefect.testing.utilities import prefect_test_harness
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with prefect_test_harness():
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


def task_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        return [r for r in client.read_task_runs() if r.name == name]


def registry(project: Path):
    from mlflow import MlflowClient
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(uri, uri)


# --- the pipeline flow -------------------------------------------------------------------------

def test_pipeline_flow_runs_every_stage_then_everything_is_up_to_date(tmp_path):
    project = flow_project(tmp_path / "p")
    summary = pipeline(project=str(project))
    assert summary["ran"] == list(STAGES) and summary["up_to_date"] == []
    train = json.loads((project / "metrics" / "train.json").read_text())
    assert summary["mlflow_run_id"] == train["mlflow_run_id"] and summary["model_version"] == "1"
    assert sorted(summary["verdicts"]) == ["song_01.wav", "song_02.wav"]
    assert all(v in ("ok", "silent", "quiet", "noise", "static", "smear", "clicks", "copy",
                         "loop", "same") for v in summary["verdicts"].values())
    assert (project / "data" / "generated" / "song_01.wav").is_file()
    status = run(["dvc", "status", "--json"], project)
    assert json.loads(status.stdout) == {}, "the flow left DVC's lock file behind the outputs"

    again = pipeline(project=str(project))
    assert again["ran"] == [] and again["up_to_date"] == list(STAGES)
    assert all(n == 1 for n in again["attempts"].values())


def test_a_held_dvc_lock_is_retried_then_the_stage_runs(tmp_path):
    project = flow_project(tmp_path / "p")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom dvc.lock import make_lock\n"
         "lock = make_lock('.dvc/tmp/lock'); lock.lock(); print('held', flush=True)\n"
         "time.sleep(float(sys.argv[1])); lock.unlock()", "5"],
        cwd=project, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        summary = pipeline(project=str(project), stages=["decode"])
    finally:
        holder.wait(30)
    assert summary["ran"] == ["decode"]
    assert summary["attempts"]["decode"] >= 2, "the first attempt should have met the held lock"
    assert (project / "data" / "interim" / "manifest.parquet").is_file()


def test_a_lock_held_past_the_retries_is_one_sentence_and_plain_dvc_says_so_too(tmp_path):
    project = flow_project(tmp_path / "p", {"flows.retries": 0})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom dvc.lock import make_lock\n"
         "lock = make_lock('.dvc/tmp/lock'); lock.lock(); print('held', flush=True)\n"
         "time.sleep(float(sys.argv[1])); lock.unlock()", "30"],
        cwd=project, env=env(), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInProgress, match=r"^another run is in progress in .*; wait for "
                                                r"it to finish, or delete \.dvc/tmp/lock"):
            pipeline(project=str(project), stages=["decode"])
        plain = run(["dvc", "repro"], project, check=False)    # DVC's own one-line message
        assert plain.returncode != 0 and "Traceback" not in plain.stdout + plain.stderr
        assert [line for line in (plain.stdout + plain.stderr).splitlines()
                if line.startswith("ERROR")] == [next(
                    line for line in plain.stderr.splitlines() if "Unable to acquire lock" in line)]
    finally:
        stop_group(holder)


def test_a_user_error_fails_the_flow_at_once_with_its_sentence(tmp_path):
    project = flow_project(tmp_path / "p")
    pipeline(project=str(project), stages=["decode", "wav_to_npy"])
    set_params(project / "params.yaml", {"fft_blocks.fft": "bogus"})
    with pytest.raises(UserError, match=r"fft_blocks\.fft.*'bogus'.*allowed values"):
        pipeline(project=str(project), stages=["decode", "wav_to_npy", "fft_blocks"])
    failed = [r for r in task_runs("fft_blocks") if r.state_type.value == "FAILED"]
    assert failed and failed[-1].run_count == 1, "a user's mistake must not be retried"
    assert (project / "data" / "interim" / "npy").is_dir(), "earlier stages' work is kept"


def test_pipeline_cli_prints_one_sentence_for_bad_params(tmp_path):
    project = flow_project(tmp_path / "p", {"flows.retries": -1})
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--project", str(project)],
                          cwd=ROOT, env=dict(env(), PREFECT_API_URL=os.environ.get(
                              "PREFECT_API_URL", "")), capture_output=True, text=True)
    assert proc.returncode == 1
    assert "error: params.yaml 'flows.retries' must be at least 0, got -1." in \
        proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr

    set_params(project / "params.yaml", {"flows.retries": 1, "data.raw_dir": "no/such/folder"})
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--project", str(project)],
                          cwd=ROOT, env=dict(env(), PREFECT_API_URL=os.environ.get(
                              "PREFECT_API_URL", "")), capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: Audio folder '{project / 'no/such/folder'}' (params.yaml 'data.raw_dir') " \
           "does not exist; put your songs there or set data.raw_dir to your music folder." \
        in proc.stderr.splitlines()


# --- retraining and the champion ---------------------------------------------------------------

@pytest.fixture(scope="module")
def served_project(tmp_path_factory) -> Path:
    """A project whose first retraining made version 1 the champion (one epoch of training)."""
    project = flow_project(tmp_path_factory.mktemp("retrain") / "p", {"train.epochs": 1})
    first = retrain(project=str(project))
    assert first["decision"] == "promoted" and first["champion"] == "1"
    assert first["ran"] == list(STAGES) and "decode" in first["changed"]
    return project


def test_retrain_promotes_only_a_challenger_that_beats_the_champion(served_project):
    project, client = served_project, registry(served_project)
    assert str(client.get_model_version_by_alias("rawtune", "champion").version) == "1"

    unchanged = retrain(project=str(project))
    assert unchanged["decision"] == "nothing changed" and unchanged["ran"] == []
    assert len(client.search_model_versions("name='rawtune'")) == 1

    set_params(project / "params.yaml", {"train.epochs": 12})        # a better model
    better = retrain(project=str(project))
    assert better["changed"] == ["train"] and better["ran"] == ["train", "generate", "evaluate"]
    assert better["decision"] == "promoted" and better["challenger"] == "2"
    assert better["scores"]["challenger"] < better["scores"]["champion"]
    train = json.loads((project / "metrics" / "train.json").read_text())
    assert better["scores"]["challenger"] == pytest.approx(train["val_loss"], rel=1e-3)
    assert str(client.get_model_version_by_alias("rawtune", "champion").version) == "2"
    v1, v2 = (client.get_model_version("rawtune", v) for v in ("1", "2"))
    assert v2.tags["rawtune.decision"] == "promoted" and "lost" in v1.tags["rawtune.defended"]
    assert float(v1.tags["rawtune.val_loss"]) == pytest.approx(better["scores"]["champion"],
                                                               rel=1e-4)

    set_params(project / "params.yaml", {"train.epochs": 1})         # a worse model
    worse = retrain(project=str(project))
    assert worse["changed"] == ["train"]
    assert worse["decision"] == "not promoted" and worse["challenger"] == "3"
    assert worse["scores"]["challenger"] > worse["scores"]["champion"]
    assert str(client.get_model_version_by_alias("rawtune", "champion").version) == "2"
    v3 = client.get_model_version("rawtune", "3")
    assert v3.tags["rawtune.decision"] == "not promoted"
    assert "v2" in v3.tags["rawtune.compared"]

    # a new song: a new codebook, whose codes the champion's model cannot read
    write_song(project / "data" / "raw" / "four.wav", 4, 3.0)
    renewed = retrain(project=str(project))
    assert "decode" in renewed["changed"] and renewed["ran"][0] == "decode"
    assert renewed["decision"] == "promoted" and renewed["scores"]["champion"] == float("inf")
    assert str(client.get_model_version_by_alias("rawtune", "champion").version) == "4"


# --- serving on a real Prefect server ----------------------------------------------------------


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_serve_registers_the_cron_deployment_and_runs_a_triggered_run(served_project, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = dict(env(), PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api,
                      PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server_env.pop("PREFECT_API_KEY", None)
    logs = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=server_env, stdout=logs[0].open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    serving = None
    try:
        wait_until_serving(f"{api}/health", server, log=logs[0])
        serving = subprocess.Popen([sys.executable, "-m", "flows.retrain", "serve", "--project",
                                    str(served_project)], cwd=ROOT, env=server_env,
                                   stdout=logs[1].open("w"), stderr=subprocess.STDOUT,
                                   start_new_session=True)

        def deployment():
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
            return next((d for d in found if d["name"] == "weekly"), None)
        dep = wait_for(deployment, 90, "the deployment to be registered")
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * 1"]
        assert dep["parameters"] == {"project": str(served_project.resolve())}

        def scheduled():
            body = {"deployments": {"id": {"any_": [dep["id"]]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
            return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=5).json()
        upcoming = wait_for(scheduled, 90, "scheduled runs")
        assert all(time.strptime(r["expected_start_time"][:10], "%Y-%m-%d") for r in upcoming)

        trigger = subprocess.run([str(BIN / "prefect"), "deployment", "run",
                                  "rawtune-retrain/weekly"], env=server_env, capture_output=True,
                                 text=True, timeout=60)
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        run_id = next(w for w in trigger.stdout.split() if w.count("-") == 4 and len(w) == 36)

        def finished():
            state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]["type"]
            return state if state in ("COMPLETED", "FAILED", "CRASHED") else None
        assert wait_for(finished, 180, "the triggered run") == "COMPLETED", logs[1].read_text()
        assert "nothing changed" in logs[1].read_text()
    finally:
        if serving is not None:
            stop_group(serving)
        stop_group(server)


def test_serve_without_a_server_says_how_to_start_one(served_project):
    proc = subprocess.run([sys.executable, "-m", "flows.retrain", "serve", "--project",
                           str(served_project)], cwd=ROOT, env=dict(env(), PREFECT_API_URL=""),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert any(line.startswith("error: `serve` needs a Prefect server")
               for line in proc.stderr.splitlines())
    assert "Traceback" not in proc.stderr


# --- scale-out ---------------------------------------------------------------------------------

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
                                            "preprocess.dask_address": f"tcp://127.0.0.1:{free_port()}"})
    proc = run_stage("decode", ["--raw", "data/raw", "--out", "data/interim/wav", "--manifest",
                                "data/interim/manifest.parquet"], project, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: The Dask scheduler at 'tcp://127.0.0.1:")
    assert "Traceback" not in proc.stderr


def test_mirrored_strategy_trains_with_the_same_loss_curve(tmp_path):
    project = flow_project(tmp_path / "p", {"train.epochs": 5})
    run(["dvc", "repro", "codebook"], project)
    curves = {}
    for strategy in ("default", "mirrored"):
        set_params(project / "params.yaml", {"train.strategy": strategy})
        proc = run_stage("train", ["--models", f"m-{strategy}", "--metrics", f"{strategy}.json",
                                   "--history", f"{strategy}.csv", "--plot", f"{strategy}.png"],
                         project)
        if strategy == "mirrored":
            assert "MirroredStrategy: 1 replica(s)" in proc.stderr
        curves[strategy] = pd.read_csv(project / f"{strategy}.csv")
    a, b = curves["default"], curves["mirrored"]
    assert list(a["epoch"]) == list(b["epoch"]) == [1, 2, 3, 4, 5]
    assert a["loss"].iloc[-1] < a["loss"].iloc[0] and b["loss"].iloc[-1] < b["loss"].iloc[0]
    assert b["loss"].to_numpy() == pytest.approx(a["loss"].to_numpy(), rel=0.02)
    assert b["val_loss"].to_numpy() == pytest.approx(a["val_loss"].to_numpy(), rel=0.02)
