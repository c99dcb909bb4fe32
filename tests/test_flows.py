"""The pipeline flow on real projects: retries of a held DVC lock, a user's mistake as one
sentence, and Prefect's temporary API too slow to start. Every stage through the flow (the first
retraining of a project), retraining and serving are in test_retrain.py, the Dask executor and
tf.distribute in test_scale_out.py."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from flows.pipeline import RunInProgress, pipeline
from flows.services import stop_group
from stages.config import UserError
from tests.conftest import ROOT, cli_env, env, flow_project, run, set_params

# every test here runs real flows on real DVC projects
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def task_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        return [r for r in client.read_task_runs() if r.name == name]


# --- the pipeline flow -------------------------------------------------------------------------

def test_a_held_dvc_lock_is_retried_then_the_stage_runs(tmp_path):
    """Another DVC holds the project's lock until the flow's first attempt has failed on it (on
    a loaded machine the flow may take seconds to get there: a fixed hold could end first)."""
    project, released = flow_project(tmp_path / "p"), tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom dvc.lock import make_lock\n"
         "lock = make_lock('.dvc/tmp/lock'); lock.lock(); print('held', flush=True)\n"
         "end = time.monotonic() + 120\n"
         "while not os.path.exists(sys.argv[1]) and time.monotonic() < end: time.sleep(0.05)\n"
         "lock.unlock()", str(released)],
        cwd=project, env=env(), stdout=subprocess.PIPE, text=True)
    before = {r.id for r in task_runs("decode")}

    def release_after_a_failed_attempt():
        while not released.exists():
            runs = [r for r in task_runs("decode") if r.id not in before]
            if any(r.run_count >= 2 or r.state_name == "AwaitingRetry" for r in runs):
                released.touch()
            time.sleep(0.1)
    watcher = threading.Thread(target=release_after_a_failed_attempt, daemon=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        watcher.start()
        summary = pipeline(project=str(project), stages=["decode"])
    finally:
        released.touch()
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



# --- a busy machine ------------------------------------------------------------------------------

def test_a_temporary_api_too_slow_to_start_is_tried_twice_then_one_sentence(tmp_path):
    project = flow_project(tmp_path / "p", {"flows.startup_timeout_s": 1})
    for module in ("flows.pipeline", "flows.retrain"):
        proc = subprocess.run([sys.executable, "-m", module, "--project", str(project)], cwd=ROOT,
                              env=cli_env(tmp_path / "home"), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        lines = proc.stderr.splitlines()
        assert "Prefect's temporary API did not start within 1 s (a busy machine?); trying once " \
               "more." in lines
        assert lines[-1] == (
            "error: Prefect's temporary API did not start within 1 s, twice (the machine is "
            "busy); raise flows.startup_timeout_s in params.yaml, or start a Prefect server "
            "(`make serve`) and set PREFECT_API_URL=http://127.0.0.1:4200/api before running "
            "the flow.")
    assert not (project / "data" / "interim" / "wav").exists(), "no stage ran"
