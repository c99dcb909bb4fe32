"""Stage `train`: teach the network to predict the next FFT block, track it in MLflow, resume after
a crash.

Reads the `tensors` outputs (memory-mapped, never loaded whole), trains the model of
`stages.model` with params.yaml `train:`, and writes
  models/model.keras            the best model by validation loss (no optimizer state)
  models/checkpoints/           the last finished epoch, deleted when training ends
  metrics/train.json            val_loss, the trivial baselines and their ratio, the MLflow run id
  metrics/train_history.csv     loss and val_loss per epoch (`dvc plots show`)
  metrics/train_curve.png       the same curves with the baselines, offline
Killed at any moment, the next run continues from the last finished epoch, in the same MLflow run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stages import common, model as netlib, plots, tracking
from stages.batches import (BASELINES, EpochClock, Normaliser, Tensors, baseline_losses,
                            dataset)
from stages.common import UserError

log = logging.getLogger("rawtune")

STATE = "state.json"
CKPT_PREFIX = "epoch-"


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int
    epochs: int
    patience: int
    normalise: bool
    shuffle_seed: int
    seed: int
    threads: int
    strategy: str

    @classmethod
    def from_params(cls, params: dict) -> "TrainConfig":
        p = lambda key, *a, **k: common.param(params, f"train.{key}", *a, **k)  # noqa: E731
        return cls(batch_size=p("batch_size", int, minimum=1), epochs=p("epochs", int, minimum=1),
                   patience=p("patience", int, minimum=0), normalise=p("normalise", bool),
                   shuffle_seed=p("shuffle_seed", int), seed=p("seed", int),
                   threads=p("threads", int, minimum=0),
                   strategy=p("strategy", str, choices=STRATEGIES))


STRATEGIES = ("default", "mirrored", "multi_worker")


def distribution_strategy(name: str):
    """The `tf.distribute` strategy that builds, trains and checkpoints the model.
    mirrored: one replica per local GPU (the CPU when there is none), gradients all-reduced.
    multi_worker: synchronous training over the machines listed in the TF_CONFIG environment
    variable (README); with no TF_CONFIG it is a single worker."""
    import tensorflow as tf
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


# --- files ------------------------------------------------------------------------------------

def save_keras(model, path: Path, with_optimizer: bool) -> None:
    """Save atomically (Keras wants the .keras suffix, so the temp name keeps it). Without the
    optimizer, the saved model is an uncompiled view of the same layers: half the size."""
    keras = netlib.import_keras()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    target = model if with_optimizer else keras.Model(model.inputs, model.outputs,
                                                       name=model.name)
    try:
        target.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_keras_tmp(folder: Path) -> None:
    if folder.is_dir():
        for leftover in folder.glob(".*.tmp.keras"):
            leftover.unlink(missing_ok=True)


def write_history(path: Path, history: list[dict]) -> None:
    with common.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "loss", "val_loss", "seconds"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def tensors_fingerprint(tensors: Tensors) -> list:
    """Identity of the training data without reading it: the tensors stage rewrites every file
    it makes, so size and modification time change whenever the data does."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                  for p in tensors.folder.glob(f"{tensors.name}_*.npy"))


def fingerprint(train_params: dict, tensors: Tensors) -> str:
    blob = json.dumps([train_params, tensors_fingerprint(tensors)], sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def load_state(ckpt_dir: Path) -> dict | None:
    path = ckpt_dir / STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ckpt = ckpt_dir / state.get("checkpoint", "")
    return state if state.get("checkpoint") and ckpt.is_file() else None


# --- the per-epoch bookkeeping ------------------------------------------------------------------

def log_pending_metrics(state: dict, tracker: tracking.Tracker, ckpt_dir: Path) -> None:
    """Send MLflow the epochs committed but not yet logged (a kill can fall in between), with
    step = epoch (counted from 1, as Keras prints it), and note how far the log goes."""
    done = state.get("logged_through", 0)
    pending = [row for row in state["history"] if row["epoch"] > done]
    if not pending or not tracker.active:
        return
    for row in pending:
        tracker.log_metrics({k: row[k] for k in ("loss", "val_loss", "seconds")},
                            step=row["epoch"])
    if tracker.active:
        state["logged_through"] = pending[-1]["epoch"]
        common.write_json(ckpt_dir / STATE, state)


def epoch_end_callback(state: dict, ckpt_dir: Path, model_path: Path, history_path: Path,
                       tracker: tracking.Tracker, clock: EpochClock, patience: int,
                       has_val: bool):
    keras = netlib.import_keras()

    class EpochEnd(keras.callbacks.Callback):
        """After each epoch: checkpoint, then commit the state file (the resume point), then the
        best model, MLflow metrics and the history CSV. Patience counts epochs since the best."""

        def on_epoch_begin(self, epoch, logs=None):
            clock.epoch = epoch
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            loss, val = logs.get("loss"), logs.get("val_loss")
            if not all(v is not None and math.isfinite(v) for v in (loss, val if has_val else 0)):
                state["stopped"] = "nan"
                state["nan_epoch"] = epoch
                self.model.stop_training = True
                return
            row = dict(epoch=epoch + 1, loss=float(loss), val_loss=None if val is None else float(val),
                       seconds=round(time.perf_counter() - self.t0, 3))
            monitor = row["val_loss"] if has_val else row["loss"]
            improved = state.get("best_loss") is None or monitor < state["best_loss"]
            name = f"{CKPT_PREFIX}{epoch:05d}.keras"
            save_keras(self.model, ckpt_dir / name, with_optimizer=True)
            state["history"].append(row)
            state.update(epoch=epoch, checkpoint=name,
                         wait=0 if improved else state.get("wait", 0) + 1)
            if improved:
                state.update(best_loss=monitor, best_epoch=epoch)
            if patience and state["wait"] >= patience:
                state["stopped"] = "early_stopping"
            common.write_json(ckpt_dir / STATE, state)          # the commit point
            for old in ckpt_dir.glob(f"{CKPT_PREFIX}*.keras"):
                if old.name != name:
                    old.unlink()
            if improved:
                save_keras(self.model, model_path, with_optimizer=False)
            write_history(history_path, state["history"])
            log_pending_metrics(state, tracker, ckpt_dir)
            if state.get("stopped"):
                log.info("no val_loss improvement for %d epochs: stopping early (best epoch %d)",
                         patience, state["best_epoch"] + 1)
                self.model.stop_training = True

    return EpochEnd()


# --- the stage ------------------------------------------------------------------------------------

def configure_threads(threads: int) -> None:
    netlib.import_keras()
    import tensorflow as tf
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))


def verdict(val_loss: float | None, baselines: dict[str, float]) -> dict:
    if val_loss is None or not baselines:
        return dict(ratio_to_best_baseline=None, best_baseline=None, beats_repeat_last=None)
    best = min(baselines, key=baselines.get)
    return dict(ratio_to_best_baseline=val_loss / baselines[best], best_baseline=best,
                beats_repeat_last=val_loss < baselines["repeat_last"])


def main(args) -> None:
    params = common.load_params(args.params)
    cfg = netlib.ModelConfig.from_params(params)
    tc = TrainConfig.from_params(params)
    tensors = Tensors(Path(args.data), common.param(params, "tensors.name", str))
    tensors.check()
    uri = tracking.tracking_uri(params)
    experiment = common.param(params, "tracking.experiment", str)
    model_name = common.param(params, "tracking.model_name", str)
    timeout_s = common.param(params, "tracking.timeout_s", (int, float), minimum=1)
    seq_len, n_feat = tensors.shape()
    n_train, n_val = tensors.n_sequences(), tensors.n_sequences("val_")
    if n_train == 0:
        raise UserError(f"'{tensors.path('x')}' holds no training sequences; add songs.")
    has_val = n_val > 0
    if not has_val:
        log.warning("no validation songs (too few usable songs): the best model is chosen by "
                    "training loss and no baseline comparison is possible.")

    models_dir, ckpt_dir = Path(args.models), Path(args.models) / "checkpoints"
    model_path = models_dir / "model.keras"
    metrics_path, history_path, curve_path = Path(args.metrics), Path(args.history), Path(args.plot)
    fp = fingerprint(dict(params["train"]), tensors)

    keras = netlib.import_keras()  # after the cheap checks: importing TensorFlow takes seconds
    configure_threads(tc.threads)
    strategy = distribution_strategy(tc.strategy)
    if tc.strategy != "default":
        log.info("tf.distribute %s: %d replica(s)", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    remove_stale_keras_tmp(models_dir)
    remove_stale_keras_tmp(ckpt_dir)
    state = load_state(ckpt_dir)
    if state is not None and state.get("fingerprint") != fp:
        log.info("checkpoint in %s was made with other params or data: starting afresh", ckpt_dir)
        state = None
    norm = Normaliser.load(tensors, tc.normalise)

    if state is None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        ckpt_dir.mkdir(parents=True)
        keras.utils.set_random_seed(tc.seed)
        with strategy.scope():
            model = netlib.build_model(cfg, seq_len, n_feat)
            netlib.compile_model(model, cfg)
        t0 = time.perf_counter()
        baselines = baseline_losses(tensors, norm, cfg.loss) if has_val else {}
        log.info("trivial predictors on the validation songs (%.1f s): %s",
                 time.perf_counter() - t0,
                 ", ".join(f"{k} {v:.4g}" for k, v in baselines.items()) or "none")
        state = dict(fingerprint=fp, history=[], baselines=baselines, run_id=None)
        initial_epoch = 0
    else:
        keras.mixed_precision.set_global_policy(cfg.precision)
        with strategy.scope():
            model = keras.saving.load_model(ckpt_dir / state["checkpoint"], safe_mode=True)
        initial_epoch = state["epoch"] + 1
        log.info("resuming from the checkpoint of epoch %d of %d", initial_epoch, tc.epochs)
        if state.get("best_epoch") == state["epoch"] or not model_path.is_file():
            save_keras(model, model_path, with_optimizer=False)  # may have been cut short
        baselines = state["baselines"]

    tracker = tracking.Tracker(uri, experiment, timeout_s)
    resumed = state["run_id"]
    state["run_id"] = tracker.start(resumed, tags={
        "git_commit": tracking.git_commit(), "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
        "rawtune.stage": "train"}) or resumed
    if tracker.run_id != resumed:
        state["logged_through"] = 0               # a new run: send it every epoch so far
    if not resumed:
        # generate/evaluate log their own sections when they add to this run
        tracker.log_params({k: v for k, v in params.items() if k not in tracking.LATER_STAGES})
        identity = tracking.dataset_identity(tensors.folder)
        tracker.log_params(identity)
        tracker.log_dataset(tensors.folder, tensors.name, identity.get("dataset.md5"))
        tracker.log_metrics({f"baseline_{k}": v for k, v in baselines.items()})
    log_pending_metrics(state, tracker, ckpt_dir)

    clock = EpochClock(initial_epoch)
    train_ds = dataset(tensors, "", tc.batch_size, norm, clock, tc.shuffle_seed)
    val_ds = dataset(tensors, "val_", tc.batch_size, norm) if has_val else None
    callbacks = [keras.callbacks.TerminateOnNaN(),
                 epoch_end_callback(state, ckpt_dir, model_path, history_path, tracker, clock,
                                    tc.patience, has_val)]
    t0 = time.perf_counter()
    if initial_epoch < tc.epochs and not state.get("stopped"):
        log.info("training %s on %d sequences (%d validation) of %d x %d, batch %d, epochs %d-%d",
                 cfg.cell.upper(), n_train, n_val, seq_len, n_feat, tc.batch_size,
                 initial_epoch + 1, tc.epochs)
        model.fit(train_ds, validation_data=val_ds, epochs=tc.epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, shuffle=False,   # the dataset shuffles, by epoch
                  verbose=1 if sys.stdout.isatty() else 2)
    train_seconds = time.perf_counter() - t0

    history = state["history"]
    if not history:
        tracker.end("FAILED")
        raise UserError("the training loss was NaN from the first epoch; lower "
                        "'train.learning_rate' in params.yaml.")
    if state.get("stopped") == "nan":
        log.warning("the loss became NaN in epoch %d: training stopped and the model of epoch "
                    "%d is kept; lower 'train.learning_rate' to go further.",
                    state["nan_epoch"] + 1, state["best_epoch"] + 1)

    best = history[state["best_epoch"]]                   # history holds every epoch from 0
    epoch_s = sum(r["seconds"] for r in history) / len(history)
    step_flops = netlib.flops_per_sequence(cfg, seq_len, n_feat) * n_train
    summary = dict(val_loss=best["val_loss"], loss=best["loss"], best_epoch=best["epoch"],
                   epochs_run=len(history), stopped=state.get("stopped", "completed"),
                   baselines=baselines, **verdict(best["val_loss"], baselines),
                   sequences_train=n_train, sequences_val=n_val,
                   seconds_per_epoch=round(epoch_s, 3),
                   gflops_per_second=round(step_flops / max(epoch_s, 1e-9) / 1e9, 1),
                   mlflow_run_id=tracker.run_id, tracking_uri=uri if tracker.run_id else None)
    if summary["beats_repeat_last"] is False:
        log.warning("val_loss %.4g does not beat repeating the last block (%.4g): the model is "
                    "not learning; try more epochs, a lower learning rate or more songs.",
                    best["val_loss"], baselines["repeat_last"])
    elif summary["ratio_to_best_baseline"] is not None:
        log.info("val_loss %.4g = %.3f x the best trivial predictor (%s)", best["val_loss"],
                 summary["ratio_to_best_baseline"], summary["best_baseline"])

    plots.training_curve(history, baselines, curve_path,
                         title=f"{cfg.cell.upper()} {cfg.hidden} x {cfg.layers}, best epoch "
                               f"{best['epoch']}")
    write_history(history_path, history)
    tracker.log_metrics({"best_val_loss": best["val_loss"], "best_loss": best["loss"],
                         "ratio_to_best_baseline": summary["ratio_to_best_baseline"],
                         "train_seconds": train_seconds})
    tracker.set_tags({"rawtune.stopped": summary["stopped"]})
    tracker.log_artifact(curve_path, "plots")
    tracker.log_artifact(history_path, "plots")
    for suffix in ("mean", "var"):                      # generation needs them to undo normalising
        tracker.log_artifact(tensors.path(suffix), "normalisation")
    if tracker.active:
        best_model = keras.saving.load_model(model_path, safe_mode=True)
        summary["model_version"] = tracker.log_keras_model(best_model, model_name, seq_len, n_feat)
        summary["model_name"] = model_name if summary["model_version"] else None
    tracker.end()
    common.write_json(metrics_path, summary)
    shutil.rmtree(ckpt_dir, ignore_errors=True)       # done: nothing left to resume
    log.info("model -> %s (epoch %d, val_loss %s); MLflow run %s", model_path, best["epoch"],
             best["val_loss"], tracker.run_id or "not tracked")


def build_parser():
    parser = common.stage_parser(__doc__)
    parser.add_argument("--data", default="data/processed",
                        help="the tensors stage's folder (default: %(default)s)")
    parser.add_argument("--models", default="models", help="model folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/train.json",
                        help="summary metrics (default: %(default)s)")
    parser.add_argument("--history", default="metrics/train_history.csv",
                        help="per-epoch CSV for `dvc plots` (default: %(default)s)")
    parser.add_argument("--plot", default="metrics/train_curve.png",
                        help="training-curve PNG (default: %(default)s)")
    return parser


if __name__ == "__main__":
    common.cli(main, build_parser())
