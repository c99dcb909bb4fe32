"""The closing summary a person reads after `make demo`: every song's verdict and deciding figure,
where things are, and the next command, in under 80 columns; and the address `make ui` prints."""
from __future__ import annotations

import subprocess
import sys

from stages import files, report, tracking
from stages.config import TrackingConfig
from tests.conftest import ROOT, env

LONG = ("frame Fréchet distance 1234.5 is closer to noise (2000.1) than to real (300.2), a "
        "reason longer than a terminal line")


def test_the_summary_names_every_song_and_fits_80_columns(tmp_path):
    metrics = tmp_path / "metrics"
    files.write_json(metrics / "eval.json", {"songs": [
        {"file": "song_01.wav", "verdict": "ok", "reason": "dynamics 12.1 dB, tonal 0.181"},
        {"file": "song_02.wav", "verdict": "noise", "reason": LONG}]})
    files.write_json(metrics / "train.json", {"val_loss": 0.283, "best_epoch": 187,
                                              "ratio_to_best_baseline": 0.58})
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "stages.report", "--metrics", str(metrics),
                           "--port", "5123"], cwd=tmp_path, env=env(), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    text = " ".join(line.strip() for line in lines)
    assert "song_01.wav ok dynamics 12.1 dB" in " ".join(text.split())
    assert "song_02.wav noise frame Fréchet" in " ".join(text.split())
    assert "reason longer than a terminal line" in text               # wrapped, never cut
    assert "1 of 2 judged ok" in text and "val_loss 0.283" in text
    assert lines[-1] == "Next: make ui, then open http://127.0.0.1:5123"   # no store yet
    assert not (tmp_path / "mlflow.db").exists()                         # nor made by asking


def test_the_ui_address_is_the_runs_table_of_a_model_training_experiment(tmp_path, monkeypatch):
    cfg = TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", "rawtune", "rawtune", 10)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.uri)   # mlflow exports it; put back after
    tracker = tracking.Tracker(cfg)
    tracker.start()
    tracker.end()
    from mlflow import MlflowClient
    experiment = MlflowClient(cfg.uri).get_experiment_by_name("rawtune")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert report.ui_address(cfg, 5000) == \
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"


def test_a_new_store_appears_only_when_complete(tmp_path):
    # a run killed while MLflow creates its tables must not leave a store no run can open
    db = tmp_path / "sub" / "mlflow.db"
    tracking.ensure_store(f"sqlite:///{db}")
    assert db.is_file() and [p.name for p in db.parent.iterdir()] == ["mlflow.db"]
    from mlflow import MlflowClient
    assert [e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()] == ["Default"]
