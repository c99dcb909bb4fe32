"""The MLflow model registry, through MLflow's public client only: a registered model loaded with
the audio settings and the normalisation it was trained with, and the `champion` alias.

Nothing here touches MLflow's process-wide tracking URI: every call names its store, so the
stage (or flow) that asks keeps whatever store it had.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.batches import Normaliser
from stages.config import AudioConfig, UserError
from stages.tracking import AUDIO_KEY

ALIAS = "champion"


def client_for(uri: str):
    from mlflow import MlflowClient
    return MlflowClient(uri, uri)


def artifacts_uri(client, model_uri: str) -> str:
    """Where a models:/name/version, models:/name@alias or runs:/ URI keeps its files."""
    if model_uri.startswith("runs:/"):
        return model_uri
    rest = model_uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, _, version = rest.rpartition("/")
    return client.get_model_version_download_uri(name, version)


def load_model(model_uri: str, tracking_uri: str):
    """(keras model, its AudioConfig or None) of a logged or registered model."""
    import mlflow
    from mlflow.models import Model
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=artifacts_uri(client_for(tracking_uri), model_uri), dst_path=tmp,
                tracking_uri=tracking_uri)
            metadata = Model.load(local).metadata or {}
            model = mlflow.keras.load_model(local, load_model_kwargs={"safe_mode": True})
    except Exception as err:  # noqa: BLE001 - any registry failure is the user's to fix
        raise UserError(f"MLflow model '{model_uri}' could not be loaded "
                        f"({type(err).__name__}); check the name and alias.") from err
    audio = metadata.get(AUDIO_KEY)
    return model, AudioConfig.from_dict(audio) if audio else None


def champion_version(client, name: str):
    """The registry's model version holding the `champion` alias, or None."""
    from mlflow.exceptions import MlflowException
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(err).lower():
            return None
        raise


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


@dataclass
class Registered:
    """A registered model version with everything needed to score it on today's data."""
    version: str
    model: object
    audio: AudioConfig | None
    norm: Normaliser


def registered(client, tracking_uri: str, name: str, version: str) -> Registered:
    mv = client.get_model_version(name, version)
    model, audio = load_model(f"models:/{name}/{version}", tracking_uri)
    return Registered(str(version), model, audio, run_normaliser(client, mv.run_id))


def cannot_read(contender: Registered, audio: AudioConfig, n_data: int) -> str | None:
    """Why a registered model cannot be scored on data of these audio settings (with the
    codebook the current codes are of) and `n_data` features ('key: model vs data; ...'), or
    None. A model saved without audio settings is judged by its feature count alone."""
    if contender.audio is not None:
        return "; ".join(contender.audio.differences(audio)) or None
    n_model = contender.model.input_shape[-1]
    return f"{n_model} features vs {n_data}" if n_model != n_data else None
