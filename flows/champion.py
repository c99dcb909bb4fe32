"""Challenger against champion: both registered models scored on the current validation songs
(`stages.batches.model_loss`, each through its own normalisation), the registry's `champion`
alias moved only when the challenger wins. Every version compared is tagged with the figures.

A challenger made for other audio settings than the data is refused (it cannot be: `train` made it
from this data); a champion that cannot read the current data (block size changed, say) scores
inf and is replaced.
"""
from __future__ import annotations

import logging
from pathlib import Path

from flows.project import Paths
from stages import config, files, registry
from stages.batches import Normaliser, code_model_loss, model_loss
from stages.codebook import Codes
from stages.config import TrackingConfig, UserError
from stages.model import ModelConfig
from stages.tensor_files import Tensors

log = logging.getLogger("rawtune")

METRICS = ("val_loss",)   # lower is better


def decide(challenger: float, champ: float | None, min_improvement: float) -> bool:
    """Whether the challenger wins: always against no champion, else by at least the fraction
    `min_improvement` of the champion's score (lower is better)."""
    return champ is None or challenger < champ * (1.0 - min_improvement)


def challenger_version(paths: Paths) -> str:
    version = (files.read_json(paths.train_metrics) or {}).get("model_version")
    if not version:
        raise UserError("The last training run registered no model (tracking was off); run the "
                        "pipeline again with the MLflow store reachable.")
    return str(version)


class Scorer:
    """Scores registered models on the current validation songs, by the current objective:
    the validation loss of the regression and Laplace families on the current tensors (each
    model through its own normalisation), cross-entropy on the current codes for codebook models
    (whose codebook must be the current one)."""

    def __init__(self, params: dict, paths: Paths):
        self.objective = ModelConfig.from_params(params).objective
        self.tensors = Tensors.from_params(paths.tensors, params)
        self.tensors.check()
        self.current = Normaliser.for_params(self.tensors, params)
        self.audio, self.n_features = self.tensors.audio(), self.tensors.shape()[1]
        self.codes = None
        if self.objective == "codebook":
            self.codes = Codes(paths.codebook).check()
            self.audio = self.audio.with_codebook(self.codes.digest)
            self.n_features = self.codes.n_codes

    def cannot_read(self, contender: registry.Registered) -> str | None:
        return registry.cannot_read(contender, self.audio, self.n_features)

    def loss(self, contender: registry.Registered) -> float:
        if self.codes is not None:
            return code_model_loss(contender.model, self.codes)
        return model_loss(contender.model, contender.norm, self.tensors, self.current,
                          self.objective)


def score_champion(champ: registry.Registered, scorer: Scorer) -> float:
    """The champion's loss, or inf when it cannot read the current data."""
    why = scorer.cannot_read(champ)
    if why:
        log.info("champion v%s cannot read the current data (champion vs data: %s): it cannot "
                 "be scored on it, so the challenger takes its place", champ.version, why)
        return float("inf")
    return scorer.loss(champ)


def tag(client, name: str, metric: str, scores: dict, challenger: str, champ: str | None,
        wins: bool) -> str:
    """Record the comparison on both versions; returns its one-line figures."""
    figures = (f"{metric} {scores['challenger']:.5g} vs champion "
               + (f"v{champ} {scores['champion']:.5g}" if champ else "none"))
    decision = "promoted" if wins else "not promoted"
    for key, value in {"rawtune.decision": decision, "rawtune.compared": figures,
                       f"rawtune.{metric}": f"{scores['challenger']:.6g}"}.items():
        client.set_model_version_tag(name, challenger, key, value)
    if champ is not None:
        client.set_model_version_tag(name, champ, f"rawtune.{metric}", f"{scores['champion']:.6g}")
        client.set_model_version_tag(name, champ, "rawtune.defended",
                                     f"{'lost' if wins else 'kept the alias'} against "
                                     f"v{challenger} ({figures})")
    return figures


def promote(project: Path, params: dict) -> dict:
    """Compare the model `train` last registered with the champion, tag both versions with the
    decision and the figures, and move the alias when the challenger wins."""
    metric = config.param(params, "flows.metric", str, choices=METRICS)
    min_improvement = config.param(params, "flows.min_improvement", (int, float), minimum=0)
    tracking = TrackingConfig.from_params(params).rooted(project)
    paths = Paths.of(project)
    version = challenger_version(paths)
    scorer = Scorer(params, paths)
    client, name = registry.client_for(tracking.uri), tracking.model_name
    champ_mv = registry.champion_version(client, name)
    if champ_mv is not None and str(champ_mv.version) == version:
        log.info("version %s is already the champion; nothing to compare", version)
        return dict(decision="already champion", champion=version, challenger=version)

    challenger = registry.registered(client, tracking.uri, name, version)
    why = scorer.cannot_read(challenger)
    if why:
        raise UserError(f"Model version {version} was not made from the current data (model vs "
                        f"data: {why}); run the pipeline again.")
    scores = {"challenger": scorer.loss(challenger)}
    champ = None
    if champ_mv is not None:
        champ = registry.registered(client, tracking.uri, name, str(champ_mv.version))
        scores["champion"] = score_champion(champ, scorer)
    wins = decide(scores["challenger"], scores.get("champion"), min_improvement)
    figures = tag(client, name, metric, scores, version, champ and champ.version, wins)
    if wins:
        client.set_registered_model_alias(name, registry.ALIAS, version)
    log.info("challenger v%s %s: %s", version, "promoted" if wins else "not promoted", figures)
    return dict(decision="promoted" if wins else "not promoted", metric=metric,
                challenger=version, champion=version if wins else champ.version,
                previous_champion=champ.version if champ else None,
                scores={k: round(v, 6) for k, v in scores.items()})
