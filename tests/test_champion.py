"""Challenger against champion without a server: the decision rule, and which registered models
can be scored on today's data at all (the audio settings saved with them)."""
from __future__ import annotations

import numpy as np

from flows import champion
from stages import files, model as netlib, registry
from stages.batches import Normaliser
from stages.config import AudioConfig
from stages.tensor_files import Tensors


def test_the_decision_rule_needs_the_minimum_improvement():
    assert champion.decide(1.0, None, 0.0)
    assert champion.decide(0.98, 1.0, 0.01) and not champion.decide(0.995, 1.0, 0.01)
    assert not champion.decide(1.0, 1.0, 0.0)


def test_a_contender_made_for_other_audio_cannot_be_scored(tmp_path):
    data = AudioConfig(22050, 32768, 8, "rfft")
    tensors = Tensors(tmp_path, "music")
    np.save(tensors.path("x"), np.zeros((2, 4, 8), np.float32))
    files.write_json(tensors.audio_path, data.as_dict())
    norm = Normaliser(np.zeros(8), np.ones(8))

    def contender(audio, n_features=8):
        model = netlib.build_model(netlib.ModelConfig(hidden=2), 4, n_features)
        return registry.Registered("1", model, audio, norm)
    assert registry.cannot_read(contender(data), tensors) is None
    assert registry.cannot_read(contender(AudioConfig(44100, 32768, 8, "rfft")), tensors) == \
        "decode.sample_rate 44100 vs 22050"           # same feature count, other audio
    assert registry.cannot_read(contender(None), tensors) is None      # a model saved before
    assert registry.cannot_read(contender(None, 16), tensors) == "16 features vs 8"
