"""The train stage: the model, the tf.data feed over memory maps, the trivial baselines, and real
runs through DVC with a real sqlite MLflow store: learning, tracking, the registry, resume after
kill -9, `dvc exp run -S`, an unreachable tracking server and bad params."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stages import model as netlib
from stages.batches import EpochClock, Normaliser, baseline_losses, dataset, epoch_order
from stages.tensor_files import Tensors
from stages.config import UserError
from tests.conftest import (ROOT, TINY_TRAIN, burners, env, free_port, make_project, run,
                            run_stage, save_tensors, set_params, three_songs)


# --- tensors made by hand -------------------------------------------------------------------------

def write_tensors(folder: Path, x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray,
                  mean: np.ndarray, var: np.ndarray, name: str = "music") -> Tensors:
    return save_tensors(folder, *(a.astype(np.float32) for a in (x, y, vx, vy, mean, var)),
                        name=name)


def random_tensors(folder: Path, n=10, n_val=3, seq=4, feat=6, seed=0) -> Tensors:
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, (n, seq, feat))
    vx = rng.normal(1.0, 2.0, (n_val, seq, feat))
    shift = lambda a: np.concatenate([a[:, 1:], np.zeros_like(a[:, :1])], axis=1)  # noqa: E731
    return write_tensors(folder, x, shift(x), vx, shift(vx), x.reshape(-1, feat).mean(0),
                         x.reshape(-1, feat).var(0))


def test_baselines_match_hand_computed_values(tmp_path):
    # one validation sequence of 2 blocks, 2 features
    vx = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    vy = np.array([[[3.0, 4.0], [0.0, 0.0]]])
    mean, var = np.array([1.0, 1.0]), np.array([4.0, 1.0])
    t = write_tensors(tmp_path, vx, vy, vx, vy, mean, var)

    raw = baseline_losses(t, Normaliser.load(t, enabled=False), "mse")
    assert raw["zero_block"] == pytest.approx((9 + 16 + 0 + 0) / 4)
    assert raw["repeat_last"] == pytest.approx((4 + 4 + 9 + 16) / 4)
    assert raw["train_mean"] == pytest.approx((4 + 9 + 1 + 1) / 4)

    # normalised: (v - mean) / std with std = (2, 1); the mean predicts 0
    ny = (vy - mean) / np.sqrt(var)
    nx = (vx - mean) / np.sqrt(var)
    normed = baseline_losses(t, Normaliser.load(t, enabled=True), "mse")
    assert normed["train_mean"] == pytest.approx(float((ny ** 2).mean()))
    assert normed["repeat_last"] == pytest.approx(float(((ny - nx) ** 2).mean()))
    zero = (0 - mean) / np.sqrt(var)
    assert normed["zero_block"] == pytest.approx(float(((ny - zero) ** 2).mean()))

    mae = baseline_losses(t, Normaliser.load(t, enabled=False), "mae")
    assert mae["repeat_last"] == pytest.approx((2 + 2 + 3 + 4) / 4)


def test_baselines_stream_in_chunks_with_the_same_result(tmp_path):
    t = random_tensors(tmp_path, n_val=7)
    norm = Normaliser.load(t)
    whole = baseline_losses(t, norm, chunk=100)
    assert baseline_losses(t, norm, chunk=2) == pytest.approx(whole)


def test_normaliser_round_trip_and_identity_when_disabled():
    rng = np.random.default_rng(1)
    mean, var = rng.normal(size=5), rng.uniform(0.1, 4, 5)
    blocks = rng.normal(size=(3, 5)).astype(np.float32)
    on = Normaliser(mean, var)
    np.testing.assert_allclose(on.inverse(on.forward(blocks)), blocks, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(on.forward(blocks), (blocks - mean) / np.sqrt(var), rtol=1e-5)
    off = Normaliser(mean, var, enabled=False)
    np.testing.assert_array_equal(off.forward(blocks), blocks)


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = epoch_order(50, seed=3, epoch=4)
    assert sorted(a) == list(range(50))
    np.testing.assert_array_equal(a, epoch_order(50, seed=3, epoch=4))
    assert not np.array_equal(a, epoch_order(50, seed=3, epoch=5))
    assert not np.array_equal(a, epoch_order(50, seed=4, epoch=4))


def test_dataset_feeds_every_sequence_once_per_epoch_normalised_in_epoch_order(tmp_path):
    t = random_tensors(tmp_path, n=10, feat=6)
    norm = Normaliser.load(t)
    x, y = np.asarray(t.read("x")), np.asarray(t.read("y"))
    clock = EpochClock(0)
    ds = dataset(t, "", batch_size=4, norm=norm, clock=clock, seed=9)
    assert int(ds.cardinality()) == 3

    def one_epoch(epoch):
        clock.epoch = epoch
        xs, ys = zip(*[(a.numpy(), b.numpy()) for a, b in ds])
        return np.concatenate(xs), np.concatenate(ys)

    for epoch in (0, 1):
        got_x, got_y = one_epoch(epoch)
        assert got_x.shape == (10, 4, 6)
        order = epoch_order(10, 9, epoch)
        batches = [np.sort(order[i:i + 4]) for i in range(0, 10, 4)]   # sorted inside a batch
        idx = np.concatenate(batches)
        np.testing.assert_allclose(got_x, norm.forward(x[idx]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_y, norm.forward(y[idx]), rtol=1e-5, atol=1e-5)
    assert not np.array_equal(one_epoch(0)[0], one_epoch(1)[0])
    np.testing.assert_array_equal(one_epoch(1)[0], one_epoch(1)[0])   # a resumed epoch is the same


def test_the_data_fingerprint_changes_with_any_song_file_the_index_or_the_statistics(tmp_path):
    from stages.train import tensors_fingerprint
    t = random_tensors(tmp_path, n=7)
    seen = [tensors_fingerprint(t)]
    assert tensors_fingerprint(t) == seen[0]                       # reading changes nothing

    def changed_by(write) -> bool:
        time.sleep(0.02)                                           # a later modification time
        write()
        seen.append(tensors_fingerprint(t))
        return seen[-1] != seen[-2]
    song = t.song_path(t.song_ids()[1], "y")
    assert changed_by(lambda: np.save(song, np.load(song) + 1))    # same size, new content
    assert changed_by(lambda: t.index_path.write_bytes(t.index_path.read_bytes()))
    for suffix in ("mean", "var"):
        assert changed_by(lambda: np.save(t.path(suffix), np.load(t.path(suffix)) * 2))
    assert changed_by(lambda: np.save(t.song_path("new", "x"), np.zeros((1, 4, 6), np.float32)))
    assert changed_by(lambda: t.song_path("new", "x").unlink())    # a song removed


def test_model_shapes_cells_and_layers():
    for cell, layers in (("lstm", 1), ("gru", 2)):
        cfg = netlib.ModelConfig(cell=cell, hidden=8, layers=layers, dropout=0.1)
        m = netlib.build_model(cfg, 5, 12)
        out = m(np.zeros((3, 5, 12), np.float32))
        assert tuple(out.shape) == (3, 5, 12)
        kinds = [type(layer.layer).__name__ if hasattr(layer, "layer") else type(layer).__name__
                 for layer in m.layers]
        assert kinds == ["InputLayer", "Dense"] + [cell.upper()] * layers + ["Dense"]


def test_one_model_predicts_sequences_of_any_length():
    # Keras 3's TimeDistributed kept the first call's length: (3, 50) in gave (3, 3) out
    m = netlib.build_model(netlib.ModelConfig(hidden=8), None, 6)
    for t in (8, 50, 3):
        out = m.predict_on_batch(np.zeros((3, t, 6), np.float32))
        assert tuple(np.asarray(out).shape) == (3, t, 6)


def test_model_config_names_the_bad_key_and_allowed_values():
    params = {"train": {"family": "regression", "cell": "transformer", "hidden": 8, "layers": 1, "dropout": 0.0,
                        "loss": "mse", "optimizer": "rmsprop", "learning_rate": 0.001,
                        "precision": "float32", "jit_compile": False, "input_noise": 0.0}}
    with pytest.raises(UserError, match=r"'train.cell' is 'transformer'; allowed values are "
                                        r"'lstm', 'gru'"):
        netlib.ModelConfig.from_params(params)
    params["train"].update(cell="gru", loss="huber")
    with pytest.raises(UserError, match=r"'train.loss'.*'mse', 'mae'"):
        netlib.ModelConfig.from_params(params)
    params["train"].update(loss="mae", dropout=1.5)
    with pytest.raises(UserError, match=r"'train.dropout' must be below 1"):
        netlib.ModelConfig.from_params(params)
    params["train"].update(dropout=0.0, family="gan")
    with pytest.raises(UserError, match=r"'train.family' is 'gan'; allowed values are "
                                        r"'regression', 'laplace', 'codebook'"):
        netlib.ModelConfig.from_params(params)


@pytest.mark.parametrize("family", ["laplace", "codebook"])
def test_a_sampled_family_learns_and_its_checkpoint_loads_again(tmp_path, family):
    import keras
    keras.utils.set_random_seed(0)
    cfg = netlib.ModelConfig(family=family, hidden=16, optimizer="adam", learning_rate=0.01)
    rng = np.random.default_rng(0)
    if family == "codebook":           # a cycle of 5 codes: the next code follows from the last
        x = (np.arange(8)[None] + rng.integers(5, size=(32, 1))) % 5
        x, y, n = x.astype(np.int32), ((x + 1) % 5).astype(np.int32), 5
    else:                              # the next frame is the last one plus noise of scale 0.1
        x = rng.normal(size=(32, 8, 3)).astype(np.float32)
        y, n = x + rng.laplace(0, 0.1, x.shape).astype(np.float32), 3
    model = netlib.build_model(cfg, 8, n)
    netlib.compile_model(model, cfg)
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=60, batch_size=8, verbose=0)
    last = model.evaluate(x, y, verbose=0)
    assert last < first - 1.0                      # nats: far likelier than at the start
    netlib.save(model, tmp_path / "ckpt.keras", None, with_optimizer=True)
    again = keras.saving.load_model(tmp_path / "ckpt.keras", safe_mode=True)
    assert again.evaluate(x, y, verbose=0) == pytest.approx(last, rel=1e-4)
    if family == "laplace":            # the learnt scale is the noise's (E|X - mu| = b = 0.1)
        b = np.exp(model.predict(x, verbose=0)[..., 3:])
        assert 0.05 < np.median(b) < 0.2


def test_code_noise_swaps_input_codes_only_while_training_and_loads_again(tmp_path):
    """train.input_noise on a codebook model: that share of the input codes is replaced by
    random codes in training, none at inference; the model still learns, loads again, and
    generation steps it like the whole sequence (the noise is no step of it)."""
    import keras
    from stages import generate
    keras.utils.set_random_seed(0)
    cfg = netlib.ModelConfig(family="codebook", hidden=16, optimizer="adam", learning_rate=0.01,
                             input_noise=0.25)
    model = netlib.build_model(cfg, 8, 5)
    noise = model.get_layer("input_noise")
    codes = np.tile(np.arange(5, dtype=np.int32), (200, 2))
    swapped = np.asarray(noise(codes, training=True))
    assert 0.15 < np.mean(swapped != codes) < 0.25          # 0.25 x the 4 codes of 5 that differ
    assert swapped.min() >= 0 and swapped.max() <= 4
    np.testing.assert_array_equal(np.asarray(noise(codes, training=False)), codes)
    rng = np.random.default_rng(0)
    x = ((np.arange(8)[None] + rng.integers(5, size=(32, 1))) % 5).astype(np.int32)
    y = ((x + 1) % 5).astype(np.int32)
    netlib.compile_model(model, cfg)
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=60, batch_size=8, verbose=0)
    last = model.evaluate(x, y, verbose=0)
    assert last < first - 1.0
    netlib.save(model, tmp_path / "ckpt.keras", None, with_optimizer=True)
    again = keras.saving.load_model(tmp_path / "ckpt.keras", safe_mode=True)
    assert again.evaluate(x, y, verbose=0) == pytest.approx(last, rel=1e-4)
    stepped, _ = generate.Stepper(again).run(x[:2])
    np.testing.assert_allclose(stepped, again.predict(x[:2], verbose=0), rtol=1e-4, atol=1e-5)


def test_the_time_budget_stops_before_an_epoch_would_pass_it(tmp_path):
    from stages.checkpoints import TrainState
    state = TrainState(fingerprint="f")
    cb, m = epoch_end(tmp_path, state, last_epoch=99, max_s=2.5)
    for epoch in range(3):
        cb.on_epoch_begin(epoch)
        cb.t0 -= 1.0                                # each epoch took a second
        cb.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0 - 0.1 * epoch})
        if m.stop_training:
            break
    # after 2 s a third epoch would end past 2.5 s: stop there, the best model saved
    assert epoch == 1 and state.stopped == "time_budget" and len(state.history) == 2
    assert TrainState.load(tmp_path).stopped == "time_budget"
    assert (tmp_path / "model.keras").is_file() and state.best_epoch == 1


def epoch_end(folder: Path, state, audio=None, every_s: float = 0, last_epoch: int = 5,
              patience: int = 0, max_s: float = 0.0):
    """The train stage's epoch callback on a tiny compiled model, with tracking off."""
    from stages import tracking
    from stages.checkpoints import EpochEnd, Outputs
    cfg = netlib.ModelConfig(hidden=4)
    model = netlib.build_model(cfg, 3, 4)
    netlib.compile_model(model, cfg)
    tracker = tracking.Tracker.__new__(tracking.Tracker)
    tracker.active, tracker.run_id = False, None
    cb = EpochEnd(state, Outputs(folder, folder / "model.keras", folder / "h.csv", audio,
                                 every_s=every_s, last_epoch=last_epoch, max_s=max_s), tracker,
                  EpochClock(),
                  patience=patience, has_val=True)
    cb.set_model(model)
    return cb, model


def test_nan_epoch_stops_without_checkpoint_and_keeps_the_state(tmp_path):
    from stages.checkpoints import TrainState
    state = TrainState(fingerprint="f", best_loss=0.5, best_epoch=0, epoch=0)
    cb, m = epoch_end(tmp_path, state)
    cb.on_epoch_begin(1)
    cb.on_epoch_end(1, {"loss": float("nan"), "val_loss": 1.0})
    assert m.stop_training and state.stopped == "nan" and state.nan_epoch == 1
    assert list(tmp_path.iterdir()) == []            # nothing saved from the broken weights


def test_each_epoch_commits_a_state_that_a_new_process_resumes_from(tmp_path):
    from stages.checkpoints import TrainState
    from stages.config import AudioConfig
    audio = AudioConfig(22050, 32768, 4, "rfft")
    state = TrainState(fingerprint="f", baselines={"zero_block": 1.0})
    cb, m = epoch_end(tmp_path, state, audio, every_s=0, last_epoch=5, patience=2)
    for epoch, val in enumerate([0.9, 0.8, 0.85, 0.86]):
        cb.on_epoch_begin(epoch)
        cb.on_epoch_end(epoch, {"loss": 1.0, "val_loss": val})
    resumed = TrainState.load(tmp_path)
    assert resumed == state and resumed.epoch == 3 and resumed.best_epoch == 1
    assert resumed.wait == 2 and resumed.stopped == "early_stopping" and m.stop_training
    assert sorted(p.name for p in tmp_path.glob("epoch-*.keras")) == ["epoch-00003.keras"]
    assert netlib.saved_audio(tmp_path / "model.keras") == audio     # the best, with its settings
    assert resumed.bytes_written > 0 and resumed.saving_s > 0
    (tmp_path / "epoch-00003.keras").unlink()
    assert TrainState.load(tmp_path) is None          # a state without its checkpoint is no state


def test_commits_come_by_time_and_the_best_epochs_weights_are_the_model(tmp_path):
    from stages.checkpoints import TrainState
    state = TrainState(fingerprint="f")
    cb, m = epoch_end(tmp_path, state, every_s=3600, last_epoch=3)
    rng = np.random.default_rng(0)
    weights = {}
    for epoch, val in enumerate([0.9, 0.5, 0.7, 0.8]):          # epoch 1 is the best
        m.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in m.get_weights()])
        weights[epoch] = m.get_weights()
        cb.on_epoch_begin(epoch)
        cb.on_epoch_end(epoch, {"loss": 1.0, "val_loss": val})
        if epoch < 3:            # within the interval: nothing written, nothing to resume from
            assert not list(tmp_path.glob("*.keras")) and TrainState.load(tmp_path) is None
    assert sorted(p.name for p in tmp_path.glob("*.keras")) == ["epoch-00003.keras", "model.keras"]
    best, _ = netlib.load(str(tmp_path / "model.keras"))
    for got, want in zip(best.get_weights(), weights[1]):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(m.get_weights(), weights[3]):           # training's own weights untouched
        np.testing.assert_array_equal(got, want)
    resumed = TrainState.load(tmp_path)
    assert resumed.epoch == 3 and resumed.best_epoch == 1 and len(resumed.history) == 4
    assert resumed.best_file is None and not list(tmp_path.glob("best-*"))


# --- real runs ------------------------------------------------------------------------------------

def metrics(project: Path) -> dict:
    return json.loads((project / "metrics/train.json").read_text())


def history(project: Path) -> list[dict]:
    with open(project / "metrics/train_history.csv") as f:
        return list(csv.DictReader(f))


def client(project: Path):
    from mlflow import MlflowClient
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


@pytest.mark.slow
def test_repro_train_learns_and_leaves_model_metrics_and_curves(trained):
    m = metrics(trained)
    rows = history(trained)
    assert [int(r["epoch"]) for r in rows] == list(range(1, TINY_TRAIN["train.epochs"] + 1))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])            # the loss goes down
    assert m["epochs_run"] == 4 and m["stopped"] == "completed"
    assert m["val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    assert set(m["baselines"]) == {"repeat_last", "train_mean"}        # codes: no zero block
    best = min(m["baselines"].values())
    assert m["ratio_to_best_baseline"] == pytest.approx(m["val_loss"] / best)
    assert (trained / "models/model.keras").stat().st_size > 0
    assert not (trained / "models/checkpoints").exists()               # finished: nothing to resume
    png = (trained / "metrics/train_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    log = (trained / "repro.log").read_text()
    assert "Traceback" not in log and "trivial predictors" in log


@pytest.mark.slow
def test_validation_is_by_song(trained):
    import pandas as pd
    index = pd.read_parquet(trained / "data/processed/music_index.parquet")
    train_songs = set(index.loc[index.split == "train", "song_id"])
    val_songs = set(index.loc[index.split == "val", "song_id"])
    assert train_songs and val_songs and not train_songs & val_songs
    m = metrics(trained)
    assert m["sequences_val"] == (index.split == "val").sum()


@pytest.mark.slow
def test_mlflow_run_holds_params_epoch_metrics_dataset_and_model(trained):
    m, c = metrics(trained), client(trained)
    run_ = c.get_run(m["mlflow_run_id"])
    p = run_.data.params
    assert p["train.hidden"] == "16" and p["train.cell"] == "lstm"
    assert p["fft_blocks.block_size"] == "2048" and p["tensors.max_seq_len"] == "8"
    summary = json.loads((trained / "metrics/preprocess.json").read_text())
    assert p["dataset.songs_train"] == str(summary["songs_train"])
    assert p["dataset.sequences_train"] == str(m["sequences_train"])
    assert p["dataset.md5"].endswith(".dir")                          # DVC's hash of the tensors
    for key in ("loss", "val_loss"):
        steps = [h.step for h in c.get_metric_history(run_.info.run_id, key)]
        assert steps == [1, 2, 3, 4]                              # step = epoch
    assert run_.data.metrics["baseline_repeat_last"] == pytest.approx(m["baselines"]["repeat_last"])
    assert run_.data.tags["git_commit"] == run(["git", "rev-parse", "HEAD"], trained).stdout.strip()
    assert [d.dataset.name for d in run_.inputs.dataset_inputs] == ["music"]
    artifacts = {a.path for a in c.list_artifacts(run_.info.run_id, "plots")}
    assert artifacts == {"plots/train_curve.png", "plots/train_history.csv"}
    version = c.get_model_version("rawtune", m["model_version"])
    assert version.run_id == run_.info.run_id
    assert run_.info.status == "FINISHED"
    assert re.fullmatch(r"train \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", run_.info.run_name)


@pytest.mark.slow
def test_registered_model_predicts_like_the_model_file_and_both_carry_the_audio(trained):
    from stages import registry
    from stages.config import AudioConfig
    m = metrics(trained)
    registered, reg_audio = registry.load_model(f"models:/rawtune/{m['model_version']}",
                                                f"sqlite:///{trained / 'mlflow.db'}")
    from stages.codebook import Codes
    local, local_audio = netlib.load(str(trained / "models/model.keras"))
    codes = Codes(trained / "data/codebook")
    x = np.load(codes.path("val_x"))[:2].astype(np.int32)          # the default family reads codes
    np.testing.assert_allclose(registered.predict(x, verbose=0), local.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    data_audio = Tensors(trained / "data/processed", "music").audio()
    assert data_audio == AudioConfig(44100, 32768, 2048, "frames", 512)
    assert reg_audio == local_audio == data_audio.with_codebook(codes.digest)
    assert len(codes.digest) == 16 and m["audio"] == reg_audio.as_dict()


@pytest.mark.slow
def test_second_repro_retrains_nothing(trained):
    proc = run(["dvc", "repro", "train"], trained)
    assert "Stage 'train' didn't change, skipping" in proc.stdout


@pytest.mark.slow
def test_dvc_exp_run_changes_the_runs_params(trained):
    proc = run(["dvc", "exp", "run", "-S", "train.hidden=8", "-S", "train.cell=gru", "train"],
               trained)                     # up to train: what the assertions read
    m = metrics(trained)
    run_ = client(trained).get_run(m["mlflow_run_id"])
    assert run_.data.params["train.hidden"] == "8" and run_.data.params["train.cell"] == "gru"
    name = run_.data.tags["dvc_experiment"]
    assert run_.info.run_name == name               # the UI lists the run under the exp's name
    assert name and name in proc.stdout
    shown = json.loads(run(["dvc", "exp", "show", "--json"], trained).stdout)
    exp_names = json.dumps(shown)
    assert name in exp_names
    assert m["model_version"] != "1"                 # a new registered version


# --- resume, server down, bad input ------------------------------------------------------------------

@pytest.mark.slow
def test_resume_after_sigkill_continues_at_the_next_epoch_in_the_same_run(tmp_path):
    epochs = 12
    project = make_project(tmp_path / "project", {**TINY_TRAIN, "train.epochs": epochs,
                                                   "train.batch_size": 2,
                                                   "train.checkpoint_every_s": 0.5})
    three_songs(project)
    run(["dvc", "repro", "codebook"], project)
    state_file = project / "models/checkpoints/state.json"
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    state = None
    while time.time() < deadline and proc.poll() is None:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = None
        if state and state["epoch"] >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    killed = json.loads(state_file.read_text())       # the last committed epoch
    assert killed["epoch"] < epochs - 1

    again = run(["dvc", "repro", "train"], project)
    assert f"resuming from the checkpoint of epoch {killed['epoch'] + 1} of {epochs}" in again.stderr
    rows = history(project)
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    m = metrics(project)
    assert m["mlflow_run_id"] == killed["run_id"]
    c = client(project)
    steps = [h.step for h in c.get_metric_history(m["mlflow_run_id"], "loss")]
    assert sorted(steps) == list(range(1, epochs + 1))                  # each epoch once
    assert c.get_run(m["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_of_dvc_repro_train_at_a_random_moment_then_repro_finishes_the_job(tmp_path, seed):
    """SIGKILL to `dvc repro train` and everything under it at a random moment (importing,
    compiling, mid-epoch, mid-checkpoint), then `dvc repro train` again."""
    import sqlite3
    import keras
    epochs = 8
    project = make_project(tmp_path / "project", {**TINY_TRAIN, "train.epochs": epochs,
                                                   "train.batch_size": 2,
                                                   "train.checkpoint_every_s": 0.5})
    three_songs(project)
    run(["dvc", "repro", "tensors"], project)
    delay = float(np.random.default_rng(seed).uniform(2.0, 14.0))
    proc = subprocess.Popen(["dvc", "repro", "train"], cwd=project, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state_file = project / "models/checkpoints/state.json"
    committed = json.loads(state_file.read_text()) if state_file.is_file() else None

    again = run(["dvc", "repro", "train"], project)
    if committed is not None:                         # resumes rather than restarts
        assert f"resuming from the checkpoint of epoch {committed['epoch'] + 1}" in again.stderr
    assert [int(r["epoch"]) for r in history(project)] == list(range(1, epochs + 1))
    keras.saving.load_model(project / "models/model.keras", safe_mode=True)
    assert not [p for p in (project / "models").rglob("*") if p.name.endswith(".tmp")]
    with sqlite3.connect(project / "mlflow.db") as db:     # the store is not corrupted
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    m, c = metrics(project), client(project)
    steps = [h.step for h in c.get_metric_history(m["mlflow_run_id"], "loss")]
    assert sorted(steps) == list(range(1, epochs + 1))                  # each epoch once
    assert c.get_run(m["mlflow_run_id"]).info.status == "FINISHED"
    assert run(["dvc", "status", "train"], project).stdout.strip().endswith("up to date.")



@pytest.mark.slow
def test_unreachable_tracking_server_is_one_sentence_and_the_model_is_kept(trained, tmp_path):
    out = tmp_path / "out"
    e = dict(env(), MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    proc = subprocess.run([sys.executable, "-m", "stages.train", "--models", str(out / "models"),
                           "--metrics", str(out / "train.json"), "--history", str(out / "h.csv"),
                           "--plot", str(out / "c.png")], cwd=trained, env=e, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "cannot be reached" in line]
    assert len(warnings) == 1 and "Traceback" not in proc.stderr
    assert (out / "models/model.keras").is_file()
    assert json.loads((out / "train.json").read_text())["mlflow_run_id"] is None


@pytest.mark.slow
@pytest.mark.parametrize("key, value, sentence", [
    ("train.cell", "transformer", "'train.cell' is 'transformer'; allowed values are 'lstm', 'gru'"),
    ("train.optimizer", "adamw", "'train.optimizer' is 'adamw'; allowed values are"),
    ("train.batch_size", 0, "'train.batch_size' must be at least 1"),
    ("train.normalise", "yes", "'train.normalise' must be bool"),
])
def test_bad_train_params_are_one_sentence(trained, tmp_path, key, value, sentence):
    params = tmp_path / "params.yaml"
    params.write_text((trained / "params.yaml").read_text())
    set_params(params, {key: value})
    proc = run_stage("train", ["--params", str(params), "--models", str(tmp_path / "m")], trained,
                     check=False)
    assert proc.returncode == 1
    assert sentence in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_tensors_is_one_sentence(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    proc = run_stage("train", ["--data", str(tmp_path / "nowhere")], tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "run `dvc repro tensors` first" in proc.stderr


def test_threads_0_takes_the_cores_other_work_leaves_free():
    """train.threads 0: with every core busy elsewhere training takes one thread (two threads
    each on two shared cores cost a second training 1.6-1.9x, one each 1.03x)."""
    code = ("from stages import train; import tensorflow as tf; "
            "print(train.configure_threads(0), tf.config.threading."
            "get_intra_op_parallelism_threads(), train.configure_threads(3))")
    busy = burners(os.cpu_count() or 1, 60)
    try:
        proc = run([sys.executable, "-c", code], ROOT)
    finally:
        for b in busy:
            b.kill()
    assert proc.stdout.split() == ["1", "1", "3"]
