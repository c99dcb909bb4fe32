"""Challenger against champion without a server: the decision rule, and which registered models
can be scored on today's data at all (the audio settings saved with them)."""
from __future__ import annotations

import numpy as np
import pytest

from flows import champion
from stages import files, model as netlib, registry
from stages.batches import Normaliser
from stages.config import AudioConfig
from stages.codebook import Codes
from tests.conftest import save_tensors


def test_the_decision_rule_needs_the_minimum_improvement():
    assert champion.decide(1.0, None, 0.0)
    assert champion.decide(0.98, 1.0, 0.01) and not champion.decide(0.995, 1.0, 0.01)
    assert not champion.decide(1.0, 1.0, 0.0)


def test_a_contender_made_for_other_audio_cannot_be_scored():
    data = AudioConfig(22050, 32768, 8, "rfft")
    norm = Normaliser(np.zeros(8), np.ones(8))

    def contender(audio, n_features=8):
        model = netlib.build_model(netlib.ModelConfig(hidden=2), 4, n_features)
        return registry.Registered("1", model, audio, norm)
    assert registry.cannot_read(contender(data), data, 8) is None
    assert registry.cannot_read(contender(AudioConfig(44100, 32768, 8, "rfft")), data, 8) == \
        "decode.sample_rate 44100 vs 22050"           # same feature count, other audio
    assert registry.cannot_read(contender(None), data, 8) is None      # a model saved before
    assert registry.cannot_read(contender(None, 16), data, 8) == "16 features vs 8"
    frames = AudioConfig(22050, 32768, 8, "frames", 2)
    coded = frames.with_codebook("aaaa")               # a model of another codebook's codes
    assert registry.cannot_read(contender(coded), frames.with_codebook("bbbb"), 8) == \
        "codebook 'aaaa' vs 'bbbb'"


def test_each_family_is_scored_as_its_training_measured_it(tmp_path):
    """The champion comparison's loss of a model on the current data is the val_loss Keras
    reports for it: cross-entropy on codes, Laplace NLL on normalised frames."""
    from stages.batches import code_model_loss, model_loss
    rng = np.random.default_rng(0)

    x, y = rng.integers(6, size=(2, 3, 5)).astype(np.int16)
    for part, codes in (("x", x), ("y", y), ("val_x", x), ("val_y", y)):
        np.save(tmp_path / f"{part}.npy", codes)
    files.write_json(tmp_path / "codebook.json", dict(family="codebook", codes=6, digest="d"))
    cfg = netlib.ModelConfig(family="codebook", hidden=4)
    model = netlib.build_model(cfg, 5, 6)
    netlib.compile_model(model, cfg)
    assert code_model_loss(model, Codes(tmp_path).check(), chunk=2) == pytest.approx(
        model.evaluate(x.astype(np.int32), y.astype(np.int32), verbose=0), rel=1e-4)

    frames = rng.normal(3, 2, size=(2, 4, 5, 3)).astype(np.float32)
    tensors = save_tensors(tmp_path / "t", frames[0], frames[1], frames[0], frames[1])
    norm = Normaliser(np.full(3, 3.0), np.full(3, 4.0))
    cfg = netlib.ModelConfig(family="laplace", hidden=4)
    model = netlib.build_model(cfg, 5, 3)
    netlib.compile_model(model, cfg)
    keras_loss = model.evaluate(norm.forward(frames[0]), norm.forward(frames[1]), verbose=0)
    assert model_loss(model, norm, tensors, norm, "laplace", chunk=3) == pytest.approx(
        keras_loss, rel=1e-4)
