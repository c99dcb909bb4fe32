"""Challenger against champion: both models scored on the current validation songs, the
registry's `champion` alias moved only when the challenger wins.

The score is the validation loss in the current data's normalised units. Each model reads the
songs through its own normalisation (the champion's `_mean`/`_var` come from its MLflow run), its
prediction is de-normalised with those same statistics and re-normalised with the current ones,
so a model trained before new songs changed the statistics is judged on equal terms. For the
challenger this equals the `val_loss` its training reported.
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import arrays, config, files
from stages.batches import Normaliser, Tensors
from stages.config import UserError

log = logging.getLogger("rawtune")

ALIAS = "champion"
METRICS = ("val_loss",)   # lower is better


@dataclass
class Contender:
    version: str
    model: object
    norm: Normaliser


def val_loss(model, norm: Normaliser, tensors: Tensors, current: Normaliser, loss: str = "mse",
             chunk: int = 16) -> float:
    """Mean loss over every element of the validation tensors, in `current`'s normalised units,
    streamed in chunks of sequences."""
    x, y = arrays.read(tensors.path("val_x")), arrays.read(tensors.path("val_y"))
    if x.shape[0] == 0:
        raise UserError(f"'{tensors.path('val_x')}' holds no validation sequences; a champion "
                        "can only be chosen with at least two songs.")
    total, count = 0.0, 0
    for start in range(0, x.shape[0], chunk):
        xs, ys = np.asarray(x[start:start + chunk]), np.asarray(y[start:start + chunk])
        pred = norm.inverse(np.asarray(model.predict_on_batch(norm.forward(xs))))
        diff = current.forward(pred) - current.forward(ys)
        total += float((diff * diff if loss == "mse" else np.abs(diff)).sum(dtype=np.float64))
        count += diff.size
    return total / count


def run_normaliser(client, run_id: str) -> Normaliser:
    """The normalisation a registered model was trained with, from its MLflow run."""
    run = client.get_run(run_id)
    enabled = run.data.params.get("train.normalise", "True") == "True"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client.download_artifacts(run_id, "normalisation", tmp))
        means, variances = sorted(folder.glob("*_mean.npy")), sorted(folder.glob("*_var.npy"))
        if not means or not variances:
            raise UserError(f"MLflow run {run_id} holds no normalisation artifacts; its model "
                            "cannot be compared.")
        return Normaliser(np.load(means[0], allow_pickle=False),
                          np.load(variances[0], allow_pickle=False), enabled)


def project_uri(params: dict, project: Path) -> str:
    """The project's tracking URI, a relative sqlite path taken from the project root."""
    from stages import tracking
    uri = tracking.tracking_uri(params)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_absolute():
        uri = f"{prefix}{Path(project).resolve() / uri[len(prefix):]}"
    return uri


def champion_version(client, name: str):
    """The registry's model version holding the `champion` alias, or None."""
    from mlflow.exceptions import MlflowException
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(err).lower():
            return None
        raise


@contextmanager
def store(uri: str):
    """mlflow's process-wide tracking and registry URIs set to `uri` for the block (a
    `models:/` URI is resolved through both), then put back, environment variables included
    (mlflow's setters export them to child processes, such as the next DVC stage)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {n: os.environ.get(n) for n in names}
    # the settings themselves, None when unset (the getters would return resolved defaults)
    saved = (getattr(tracking_utils, "_tracking_uri", None),
             getattr(registry_utils, "_registry_uri", None))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def champion(client, name: str, uri: str) -> Contender | None:
    """The model holding the `champion` alias, or None when there is none yet."""
    import mlflow
    mv = champion_version(client, name)
    if mv is None:
        return None
    with store(uri):
        model = mlflow.keras.load_model(f"models:/{name}/{mv.version}",
                                        load_model_kwargs={"safe_mode": True})
    return Contender(str(mv.version), model, run_normaliser(client, mv.run_id))


def decide(challenger: float, champ: float | None, min_improvement: float) -> bool:
    """Whether the challenger wins: always against no champion, else by at least the fraction
    `min_improvement` of the champion's score (lower is better)."""
    return champ is None or challenger < champ * (1.0 - min_improvement)


def promote(project: Path, params: dict) -> dict:
    """Compare the model `train` last registered with the champion, tag both versions with the
    decision and the figures, and move the alias when the challenger wins."""
    from mlflow import MlflowClient
    from stages.generate import load_model

    metric = config.param(params, "flows.metric", str, choices=METRICS)
    min_improvement = config.param(params, "flows.min_improvement", (int, float), minimum=0)
    name = config.param(params, "tracking.model_name", str)
    loss = config.param(params, "train.loss", str)
    train = files.read_json(project / "metrics" / "train.json") or {}
    version = train.get("model_version")
    if not version:
        raise UserError("The last training run registered no model (tracking was off); run the "
                        "pipeline again with the MLflow store reachable.")
    uri = project_uri(params, project)
    client = MlflowClient(uri, uri)

    tensors = Tensors(project / "data" / "processed", config.param(params, "tensors.name", str))
    tensors.check()
    current = Normaliser.load(tensors, config.param(params, "train.normalise", bool))
    challenger = Contender(str(version), load_model(str(project / "models" / "model.keras")),
                           current)
    champ = champion(client, name, uri)
    if champ is not None and champ.version == challenger.version:
        log.info("version %s is already the champion; nothing to compare", champ.version)
        return dict(decision="already champion", champion=champ.version, challenger=champ.version)

    scores = {"challenger": val_loss(challenger.model, challenger.norm, tensors, current, loss)}
    n_features = tensors.shape()[1]
    if champ is not None and champ.model.input_shape[-1] != n_features:
        # e.g. fft_blocks.block_size changed: the champion cannot read the current songs
        log.info("champion v%s reads blocks of %s features, the data now has %d: it cannot be "
                 "scored on it, so the challenger takes its place", champ.version,
                 champ.model.input_shape[-1], n_features)
        scores["champion"] = float("inf")
    elif champ is not None:
        scores["champion"] = val_loss(champ.model, champ.norm, tensors, current, loss)
    wins = decide(scores["challenger"], scores.get("champion"), min_improvement)
    decision = "promoted" if wins else "not promoted"
    figures = (f"{metric} {scores['challenger']:.5g} vs champion "
               + (f"v{champ.version} {scores['champion']:.5g}" if champ else "none"))
    tags = {"rawtune.decision": decision, "rawtune.compared": figures,
            f"rawtune.{metric}": f"{scores['challenger']:.6g}"}
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger.version, key, value)
    if champ is not None:
        client.set_model_version_tag(name, champ.version, f"rawtune.{metric}", f"{scores['champion']:.6g}")
        client.set_model_version_tag(name, champ.version, "rawtune.defended",
                                     f"{'lost' if wins else 'kept the alias'} against "
                                     f"v{challenger.version} ({figures})")
    if wins:
        client.set_registered_model_alias(name, ALIAS, challenger.version)
    log.info("challenger v%s %s: %s", challenger.version, decision, figures)
    return dict(decision=decision, metric=metric, challenger=challenger.version,
                champion=challenger.version if wins else champ.version,
                previous_champion=champ.version if champ else None,
                scores={k: round(v, 6) for k, v in scores.items()})
