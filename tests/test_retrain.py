"""The retraining flow with champion promotion in a real sqlite MLflow registry, both flows on a
machine whose cores are all busy, and serving the deployment on a real local Prefect server."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows.pipeline import STAGES, pipeline
from flows.retrain import retrain
from flows.services import stop_group
from tests.conftest import (BIN, ROOT, burners, cli_env, env, flow_project, free_port,
                            set_params, wait_until_serving, write_song)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def registry(project: Path):
    from mlflow import MlflowClient
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(uri, uri)


# --- retraining and the champion ---------------------------------------------------------------

@pytest.fixture(scope="module")
def first_retrain(tmp_path_factory) -> tuple[Path, dict]:
    """A fresh project's first retraining (one epoch of training) and what it returned: the
    pipeline flow ran every stage, and version 1 became the champion."""
    project = flow_project(tmp_path_factory.mktemp("retrain") / "p", {"train.epochs": 1})
    return project, retrain(project=str(project))


@pytest.fixture(scope="module")
def served_project(first_retrain) -> Path:
    project, first = first_retrain
    assert first["decision"] == "promoted" and first["champion"] == "1"
    return project


def test_the_pipeline_flow_runs_every_stage_then_everything_is_up_to_date(first_retrain):
    project, first = first_retrain
    assert first["ran"] == list(STAGES) and "decode" in first["changed"]
    train = json.loads((project / "metrics" / "train.json").read_text())
    assert first["mlflow_run_id"] == train["mlflow_run_id"] and train["model_version"] == "1"
    assert sorted(first["verdicts"]) == ["song_01.wav", "song_02.wav"]
    assert all(v in ("ok", "silent", "quiet", "noise", "static", "smear", "clicks", "copy",
                         "loop", "same") for v in first["verdicts"].values())
    assert (project / "data" / "generated" / "song_01.wav").is_file()
    status = subprocess.run(["dvc", "status", "--json"], cwd=project, env=env(),
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}, "the flow left DVC's lock file behind the outputs"

    again = pipeline(project=str(project))
    assert again["ran"] == [] and again["up_to_date"] == list(STAGES)
    assert all(n == 1 for n in again["attempts"].values())


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


# --- a busy machine ------------------------------------------------------------------------------

def test_flows_complete_while_other_work_holds_every_core(served_project, tmp_path):
    """4 busy processes on the 2 cores while both flows start: Prefect's own 20 s start-up
    timeout is not met there (a fresh start took 75 s on the 2-core machine; 16 s idle), the
    product's flows.startup_timeout_s is. The burners stop by themselves after 20 s, while
    both flows are still starting."""
    fresh = flow_project(tmp_path / "p")
    busy = burners(4, 20)
    try:
        flows = [subprocess.Popen([sys.executable, "-m", "flows.pipeline", "--project", str(fresh),
                                   "--stages", "decode", "wav_to_npy"], cwd=ROOT,
                                  env=cli_env(tmp_path / "home-pipeline"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True),
                 subprocess.Popen([sys.executable, "-m", "flows.retrain", "--project",
                                   str(served_project)], cwd=ROOT,
                                  env=cli_env(tmp_path / "home-retrain"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)]
        (pipe_out, pipe_err), (retrain_out, retrain_err) = (f.communicate(timeout=900)
                                                            for f in flows)
    finally:
        for b in busy:
            b.kill()
    assert flows[0].returncode == 0, pipe_err[-3000:]
    assert json.loads(pipe_out)["ran"] == ["decode", "wav_to_npy"]
    assert flows[1].returncode == 0, retrain_err[-3000:]
    assert json.loads(retrain_out)["decision"] == "nothing changed"
    assert "Traceback" not in pipe_err + retrain_err


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
            stop_group(serving, 5)     # a test server: no graceful wait
        stop_group(server, 5)


def test_serve_without_a_server_says_how_to_start_one(served_project):
    proc = subprocess.run([sys.executable, "-m", "flows.retrain", "serve", "--project",
                           str(served_project)], cwd=ROOT, env=dict(env(), PREFECT_API_URL=""),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert any(line.startswith("error: `serve` needs a Prefect server")
               for line in proc.stderr.splitlines())
    assert "Traceback" not in proc.stderr
