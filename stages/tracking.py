"""MLflow for the stages: where the store is, one run shared by train -> generate -> evaluate, and
a tracker that never costs the user a trained model when the tracking server is away.

The store is `config.TrackingConfig`: `MLFLOW_TRACKING_URI` when set, else params.yaml
`tracking.uri` (default `sqlite:///mlflow.db`, the store `mlflow ui` opens in the project folder).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from stages.config import AudioConfig, TrackingConfig

log = logging.getLogger("rawtune")


LATER_STAGES = ("generate", "evaluate")
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")   # model training
AUDIO_KEY = "rawtune_audio"     # the audio settings in a logged model's metadata (MLmodel file)   # params sections logged by those stages themselves


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"hidden": 1024}} -> {"train.hidden": 1024}, the names MLflow shows."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def unreachable(uri: str, timeout_s: float) -> str | None:
    """Why an http(s) tracking server cannot be used, in a few words; None when it answers (or
    the store is a local database or folder)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as reply:
            return None if reply.status == 200 else f"it answered HTTP {reply.status}"
    except urllib.error.HTTPError as err:
        return f"it answered HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def dataset_identity(data_dir: str | Path, lock_file: str | Path = "dvc.lock",
                     summary_file: str | Path = "metrics/preprocess.json") -> dict[str, Any]:
    """What the model was trained on: the tensor folder's hash as DVC recorded it, and the
    preprocessing summary (songs, minutes, sequences)."""
    ident: dict[str, Any] = {}
    lock = Path(lock_file)
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get("tensors", {}).get("outs", []):
            if Path(out.get("path", "")) == Path(data_dir):
                ident["dataset.md5"] = out.get("md5")
                ident["dataset.files"] = out.get("nfiles")
    summary = Path(summary_file)
    if summary.is_file():
        s = json.loads(summary.read_text())
        for key in ("songs_train", "songs_val", "sequences_train", "sequences_val", "minutes",
                    "n_features", "max_seq_len"):
            if key in s:
                ident[f"dataset.{key}"] = s[key]
    return ident


def ensure_store(uri: str) -> None:
    """Create a new local sqlite store under a temporary name and rename it into place: a run
    killed while MLflow creates its tables would otherwise leave a store that no later run can
    open ("table ... already exists")."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or Path(uri[len(prefix):]).exists():
        return
    from mlflow import MlflowClient
    path = Path(uri[len(prefix):])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        MlflowClient(f"{prefix}{tmp}").search_experiments()     # creates every table
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def join_run(cfg: TrackingConfig, run_id: str | None) -> "Tracker | None":
    """The tracker of the training run `run_id`, reopened so a later stage (generate, evaluate)
    adds to it; None when there is no run or it cannot be reopened."""
    if not run_id:
        return None
    tracker = Tracker(cfg)
    return tracker if tracker.start(run_id) == run_id else None


def run_name() -> str:
    """The DVC experiment's name when run by `dvc exp run`, else the start time: MLflow's own
    random names repeat here, because training seeds Python's random generator first."""
    import time
    return os.environ.get("DVC_EXP_NAME") or time.strftime("train %Y-%m-%d %H:%M:%S")


class Tracker:
    """A thin wrapper over one MLflow run. The first failure to reach the store is reported in
    one sentence and tracking is switched off for the rest of the stage; the stage's own files
    are written regardless."""

    def __init__(self, cfg: TrackingConfig):
        self.uri, self.experiment, timeout_s = cfg.uri, cfg.experiment, cfg.timeout_s
        self.run_id: str | None = None
        self.active = False
        # bound every HTTP call instead of mlflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        why = unreachable(self.uri, timeout_s)
        if why:
            self._off(f"the MLflow tracking server {self.uri} cannot be reached ({why})")
            return
        self.active = True

    def _off(self, what: str) -> None:
        if self.active or self.run_id is None:
            log.warning("%s; carrying on without tracking, the stage's files are still written.",
                        what)
        self.active = False

    def _call(self, what: str, fn, *args, **kwargs):
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # any store failure: report once, keep the stage's work
            self._off(f"MLflow could not {what} at {self.uri} ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200] if str(err) else ''})")
            return None

    def start(self, resume_run_id: str | None = None, tags: dict | None = None) -> str | None:
        """Start a run, or continue `resume_run_id`; when that run is gone, start a new one
        tagged with the id it resumes."""
        import mlflow

        def _start():
            ensure_store(self.uri)
            mlflow.set_tracking_uri(self.uri)
            experiment = mlflow.set_experiment(self.experiment)
            if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                # MLflow 3's UI shows an experiment of no kind as GenAI traces
                mlflow.MlflowClient(self.uri).set_experiment_tag(experiment.experiment_id,
                                                                 *EXPERIMENT_KIND)
            if resume_run_id:
                try:
                    return mlflow.start_run(run_id=resume_run_id)
                except mlflow.exceptions.MlflowException:
                    log.warning("MLflow run %s is gone; a new run is tagged with it.",
                                resume_run_id)
                    return mlflow.start_run(run_name=run_name(),
                                            tags={"rawtune.resumes": resume_run_id})
            return mlflow.start_run(run_name=run_name())

        run = self._call("start a run", _start)
        if run is not None:
            self.run_id = run.info.run_id
            if tags:
                self.set_tags(tags)
        return self.run_id

    def log_params(self, params: dict) -> None:
        import mlflow
        self._call("log parameters", mlflow.log_params, flatten(params))

    def log_changing_params(self, params: dict) -> None:
        """Params of a stage that may run again on the same run (generate, evaluate): new keys
        become params; a key already logged with another value is recorded as a tag instead
        (MLflow never changes a logged param)."""
        import mlflow

        def _log():
            logged = mlflow.get_run(self.run_id).data.params
            flat = {k: str(v) for k, v in flatten(params).items()}
            mlflow.log_params({k: v for k, v in flat.items() if k not in logged})
            changed = {k: v for k, v in flat.items() if k in logged and logged[k] != v}
            if changed:
                mlflow.set_tags(changed)
        self._call("log parameters", _log)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import mlflow
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self._call("log metrics", mlflow.log_metrics, clean, step=step)

    def logged_steps(self, key: str) -> list[int]:
        """The steps already logged for a metric of this run (a resumed run may have logged
        epochs after its last commit, before it was killed)."""
        import mlflow

        def _steps():
            client = mlflow.MlflowClient(self.uri)
            return sorted(m.step for m in client.get_metric_history(self.run_id, key))
        return self._call("read the metric history", _steps) or []

    def set_tags(self, tags: dict) -> None:
        import mlflow
        self._call("set tags", mlflow.set_tags, {k: str(v) for k, v in tags.items()
                                                 if v is not None})

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        import mlflow
        self._call(f"store {Path(path).name}", mlflow.log_artifact, str(path), folder)

    def log_dataset(self, folder: str | Path, name: str, digest: str | None,
                    context: str = "training") -> None:
        """Record the tensor folder as the run's input dataset (the UI's "Datasets" column)."""
        import mlflow

        def _log():
            import warnings
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(str(Path(folder).resolve()))
            mlflow.log_input(MetaDataset(source, name=name, digest=(digest or "")[:36] or None),
                             context=context)
        self._call("record the dataset", _log)

    def log_keras_model(self, model, registered_name: str | None,
                        audio: AudioConfig | None = None) -> str | None:
        """Log the model (keras flavour, with a tensor signature and the audio settings in its
        metadata) and register a new version; returns the version number."""
        import keras
        import mlflow
        import numpy as np
        import tensorflow as tf
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        def spec(tensor, name):
            return TensorSpec(np.dtype(tensor.dtype), tuple(-1 if d is None else d
                                                            for d in tensor.shape), name)
        signature = ModelSignature(inputs=Schema([spec(model.inputs[0], model.inputs[0].name)]),
                                   outputs=Schema([spec(model.outputs[0], "next")]))
        reqs = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                f"mlflow=={mlflow.__version__}"]
        info = self._call("store the model", mlflow.keras.log_model, model, name="model",
                          signature=signature, pip_requirements=reqs,
                          registered_model_name=registered_name,
                          metadata={AUDIO_KEY: audio.as_dict()} if audio else None)
        version = getattr(info, "registered_model_version", None) if info else None
        return str(version) if version is not None else None

    def end(self, status: str = "FINISHED") -> None:
        import mlflow
        if self.run_id is not None:
            self._call("close the run", mlflow.end_run, status)
