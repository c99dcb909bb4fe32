"""Stage `train`: teach the network to predict the next FFT block, track it in MLflow, resume after
a crash.

Reads the `tensors` outputs (memory-mapped, never loaded whole), trains the model of
`stages.model` with params.yaml `train:`, and writes
  models/model.keras            the best model by validation loss (no optimizer state), with the
                                audio settings of its data inside
  models/checkpoints/           the last finished epoch, deleted when training ends
  metrics/train.json            val_loss, the trivial baselines and their ratio, the MLflow run id
  metrics/train_history.csv     loss and val_loss per epoch (`dvc plots show`)
  metrics/train_curve.png       the same curves with the baselines, offline
Killed at any moment, the next run continues from the last finished epoch, in the same MLflow run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from stages import codebook, config, files, model as netlib, plots, tracking
from stages.batches import EpochClock, Normaliser, baseline_losses, code_baselines, dataset
from stages.config import AudioConfig, UserError
from stages.tensor_files import Tensors

log = logging.getLogger("rawtune")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int
    epochs: int
    patience: int
    shuffle_seed: int
    seed: int
    threads: int
    strategy: str
    checkpoint_every_s: float
    max_minutes: float

    @classmethod
    def from_params(cls, params: dict) -> "TrainConfig":
        p = config.section(params, "train", cls)
        return cls(batch_size=p("batch_size", int, minimum=1), epochs=p("epochs", int, minimum=1),
                   patience=p("patience", int, minimum=0),
                   shuffle_seed=p("shuffle_seed", int), seed=p("seed", int),
                   threads=p("threads", int, minimum=0),
                   strategy=p("strategy", str, choices=STRATEGIES),
                   checkpoint_every_s=float(p("checkpoint_every_s", (int, float), minimum=0)),
                   max_minutes=float(p("max_minutes", (int, float), minimum=0)))


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


# --- identity of a run --------------------------------------------------------------------------

def tensors_fingerprint(tensors: Tensors) -> list:
    """Identity of the training data without reading it: every file of it (each song's, the
    index, mean and variance) is written whole under a new name, so a file's size and
    modification time change whenever it does, and the list of files whenever a song comes or
    goes."""
    return [(str(p.relative_to(tensors.folder)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in tensors.files()]


def fingerprint(train_params: dict, tensors: Tensors, audio: AudioConfig) -> str:
    blob = json.dumps([train_params, tensors_fingerprint(tensors), audio.as_dict()],
                      sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class Paths:
    """The stage's outputs, from its command line."""
    models: Path
    metrics: Path
    history: Path
    curve: Path

    @property
    def ckpt_dir(self) -> Path:
        return self.models / "checkpoints"

    @property
    def model(self) -> Path:
        return self.models / "model.keras"

    @classmethod
    def from_args(cls, args) -> "Paths":
        return cls(Path(args.models), Path(args.metrics), Path(args.history), Path(args.plot))


@dataclass(frozen=True)
class Data:
    """The training data as the model sees it: the tensors' frames or blocks, or (codebook
    family) their codes, whose codebook's identity joins the audio settings."""
    tensors: Tensors
    arrays: object              # what the model reads: `tensors`, or a `codebook.Codes`
    audio: AudioConfig
    seq_len: int
    n_features: int             # features per block or frame; the number of codes for codes
    n_train: int
    n_val: int

    @classmethod
    def open(cls, folder: str | Path, params: dict, codebook_folder: str | Path) -> "Data":
        tensors = Tensors.from_params(folder, params)
        tensors.check()
        arrays, audio = tensors, tensors.audio()
        if codebook.family(params) == "codebook":
            arrays = codebook.Codes(Path(codebook_folder)).check()
            audio = audio.with_codebook(arrays.digest)
        seq_len, n_feat = arrays.shape()
        n_train, n_val = arrays.n_sequences(), arrays.n_sequences("val_")
        if n_train == 0:
            raise UserError(f"'{tensors.folder}' holds no training sequences; add songs.")
        if n_val == 0:
            log.warning("no validation songs (too few usable songs): the best model is chosen by "
                        "training loss and no baseline comparison is possible.")
        return cls(tensors, arrays, audio, seq_len, n_feat, n_train, n_val)


# --- the stage ------------------------------------------------------------------------------------

def free_cores(sample_s: float = 0.5) -> int:
    """The cores other work leaves free right now: the machine's less the CPU it used over
    `sample_s` while this process slept, at most the cores this process may run on, at least
    one."""
    import psutil
    machine = os.cpu_count() or 1
    busy = psutil.cpu_percent(interval=sample_s) / 100 * machine
    return max(1, min(config.usable_cores(), round(machine - busy)))


def configure_threads(threads: int) -> int:
    """TensorFlow's threads per op: `threads`, or (0) the cores free when training starts.
    Beside a second training on 2 cores a step took 1.6-1.9x its time alone with 2 threads each,
    1.03x with one each (bench/train.py --beside). Returns the number used."""
    return netlib.set_threads(threads or free_cores())


def verdict(val_loss: float | None, baselines: dict[str, float]) -> dict:
    if val_loss is None or not baselines:
        return dict(ratio_to_best_baseline=None, best_baseline=None, beats_repeat_last=None)
    best = min(baselines, key=baselines.get)
    return dict(ratio_to_best_baseline=val_loss / baselines[best], best_baseline=best,
                beats_repeat_last=val_loss < baselines["repeat_last"])


def new_model(cfg: netlib.ModelConfig, data: Data):
    """A compiled, untrained model for the data; a codebook model's code embedding starts from
    the codes' geometry (`train.code_init`)."""
    model = netlib.build_model(cfg, data.seq_len, data.n_features)
    if cfg.family == "codebook" and cfg.code_init == "geometry":
        model.get_layer("encode").set_weights(
            [codebook.geometry(data.arrays.load().centroids, cfg.hidden)])
    netlib.compile_model(model, cfg)
    return model


def start_or_resume(cfg: netlib.ModelConfig, tc: TrainConfig, data: Data, norm: Normaliser,
                    paths: Paths, fp: str, strategy):
    """(model, state, first epoch to run): from the last committed checkpoint when its params and
    data are this run's, else a new model with the trivial baselines measured."""
    from stages.checkpoints import TrainState, publish_best
    keras = netlib.import_keras()
    netlib.remove_stale_tmp(paths.models)
    netlib.remove_stale_tmp(paths.ckpt_dir)
    state = TrainState.load(paths.ckpt_dir)
    if state is not None and state.fingerprint != fp:
        log.info("checkpoint in %s was made with other params or data: starting afresh",
                 paths.ckpt_dir)
        state = None
    if state is not None:
        keras.mixed_precision.set_global_policy(cfg.precision)
        with strategy.scope():
            model = keras.saving.load_model(paths.ckpt_dir / state.checkpoint, safe_mode=True)
        log.info("resuming from the checkpoint of epoch %d of %d", state.epoch + 1, tc.epochs)
        publish_best(state, paths.ckpt_dir, paths.model)    # a kill may have come before it
        if not paths.model.is_file():
            netlib.save(model, paths.model, data.audio)
        return model, state, state.epoch + 1
    shutil.rmtree(paths.ckpt_dir, ignore_errors=True)
    paths.ckpt_dir.mkdir(parents=True)
    keras.utils.set_random_seed(tc.seed)
    with strategy.scope():
        model = new_model(cfg, data)
    t0 = time.perf_counter()
    if not data.n_val:
        baselines = {}
    elif cfg.family == "codebook":
        baselines = code_baselines(data.arrays)
    else:
        baselines = baseline_losses(data.tensors, norm, cfg.objective)
    log.info("trivial predictors on the validation songs (%.1f s): %s", time.perf_counter() - t0,
             ", ".join(f"{k} {v:.4g}" for k, v in baselines.items()) or "none")
    return model, TrainState(fingerprint=fp, baselines=baselines), 0


def start_tracking(params: dict, data: Data, state, paths: Paths) -> tracking.Tracker:
    """Open (or reopen) the run; a new run gets the params, the dataset and the baselines."""
    from stages.checkpoints import log_pending_metrics
    tracker = tracking.Tracker(config.TrackingConfig.from_params(params))
    resumed = state.run_id
    state.run_id = tracker.start(resumed, tags={
        "git_commit": tracking.git_commit(), "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
        "rawtune.stage": "train"}) or resumed
    if tracker.run_id != resumed:
        state.logged_through = 0               # a new run: send it every epoch so far
    elif resumed:                              # a kill can fall after logging, before noting it
        state.logged_through = max([state.logged_through, *tracker.logged_steps("loss")])
    if not resumed:
        # generate/evaluate log their own sections when they add to this run
        tracker.log_params({k: v for k, v in params.items() if k not in tracking.LATER_STAGES})
        identity = tracking.dataset_identity(data.tensors.folder)
        tracker.log_params(identity)
        tracker.log_dataset(data.tensors.folder, data.tensors.name, identity.get("dataset.md5"))
        tracker.log_metrics({f"baseline_{k}": v for k, v in state.baselines.items()})
    log_pending_metrics(state, tracker, paths.ckpt_dir)
    return tracker


def fit(model, state, first_epoch: int, tc: TrainConfig, cfg: netlib.ModelConfig, data: Data,
        norm: Normaliser, paths: Paths, tracker: tracking.Tracker) -> float:
    """Train from `first_epoch` to the end (or early stop); returns the seconds it took."""
    from stages.checkpoints import EpochEnd, Outputs
    keras = netlib.import_keras()
    clock = EpochClock(first_epoch)
    train_ds = dataset(data.arrays, "", tc.batch_size, norm, clock, tc.shuffle_seed)
    val_ds = dataset(data.arrays, "val_", tc.batch_size, norm) if data.n_val else None
    out = Outputs(paths.ckpt_dir, paths.model, paths.history, data.audio,
                  every_s=tc.checkpoint_every_s, last_epoch=tc.epochs - 1,
                  max_s=60 * tc.max_minutes)
    callbacks = [keras.callbacks.TerminateOnNaN(),
                 EpochEnd(state, out, tracker, clock, tc.patience, data.n_val > 0)]
    t0 = time.perf_counter()
    if first_epoch < tc.epochs and not state.stopped:
        log.info("training %s (%s) on %d sequences (%d validation) of %d x %d, batch %d, epochs %d-%d",
                 cfg.cell.upper(), cfg.family, data.n_train, data.n_val, data.seq_len, data.n_features,
                 tc.batch_size, first_epoch + 1, tc.epochs)
        model.fit(train_ds, validation_data=val_ds, epochs=tc.epochs, initial_epoch=first_epoch,
                  callbacks=callbacks, shuffle=False,   # the dataset shuffles, by epoch
                  verbose=0)                            # EpochEnd shows the progress
    return time.perf_counter() - t0


def summarise(state, cfg: netlib.ModelConfig, data: Data, tracker: tracking.Tracker) -> dict:
    """metrics/train.json: the best epoch beside the baselines, and how training went."""
    if not state.history:
        tracker.end("FAILED")
        raise UserError("the training loss was NaN from the first epoch; lower "
                        "'train.learning_rate' in params.yaml.")
    if state.stopped == "nan":
        log.warning("the loss became NaN in epoch %d: training stopped and the model of epoch "
                    "%d is kept; lower 'train.learning_rate' to go further.",
                    state.nan_epoch + 1, state.best_epoch + 1)
    best = state.history[state.best_epoch]                # history holds every epoch from 0
    fit_s = sum(r["seconds"] for r in state.history)
    epoch_s = fit_s / len(state.history)
    step_flops = netlib.flops_per_sequence(cfg, data.seq_len, data.n_features) * data.n_train
    summary = dict(val_loss=best["val_loss"], loss=best["loss"], best_epoch=best["epoch"],
                   epochs_run=len(state.history), stopped=state.stopped or "completed",
                   baselines=state.baselines, **verdict(best["val_loss"], state.baselines),
                   sequences_train=data.n_train, sequences_val=data.n_val,
                   seconds_per_epoch=round(epoch_s, 3),
                   saving_seconds=round(state.saving_s, 3),
                   saving_share=round(state.saving_s / max(fit_s + state.saving_s, 1e-9), 4),
                   bytes_written_per_epoch=round(state.bytes_written / len(state.history)),
                   gflops_per_second=round(step_flops / max(epoch_s, 1e-9) / 1e9, 1),
                   audio=data.audio.as_dict(), mlflow_run_id=tracker.run_id,
                   tracking_uri=tracker.uri if tracker.run_id else None)
    if summary["beats_repeat_last"] is False:
        log.warning("val_loss %.4g does not beat repeating the last block (%.4g): the model is "
                    "not learning; try more epochs, a lower learning rate or more songs.",
                    best["val_loss"], state.baselines["repeat_last"])
    elif summary["ratio_to_best_baseline"] is not None:
        log.info("val_loss %.4g = %.3f x the best trivial predictor (%s)", best["val_loss"],
                 summary["ratio_to_best_baseline"], summary["best_baseline"])
    return summary


def finish(summary: dict, state, cfg: netlib.ModelConfig, data: Data, paths: Paths,
           tracker: tracking.Tracker, train_seconds: float, model_name: str) -> None:
    """The curves, the run's closing metrics and artifacts, the registered model."""
    from stages.checkpoints import write_history
    best = state.history[state.best_epoch]
    plots.training_curve(state.history, state.baselines, paths.curve,
                         title=f"{cfg.cell.upper()} {cfg.hidden} x {cfg.layers}, best epoch "
                               f"{best['epoch']}")
    write_history(paths.history, state.history)
    tracker.log_metrics({"best_val_loss": best["val_loss"], "best_loss": best["loss"],
                         "ratio_to_best_baseline": summary["ratio_to_best_baseline"],
                         "train_seconds": train_seconds})
    tracker.set_tags({"rawtune.stopped": summary["stopped"]})
    tracker.log_artifact(paths.curve, "plots")
    tracker.log_artifact(paths.history, "plots")
    for suffix in ("mean", "var"):                      # generation needs them to undo normalising
        tracker.log_artifact(data.tensors.path(suffix), "normalisation")
    if data.arrays is not data.tensors:                 # the codebook the model's codes index
        for name in ("codebook.json", "centroids.npy", "members.npy"):
            tracker.log_artifact(data.arrays.folder / name, "codebook")
    if tracker.active:
        best_model, audio = netlib.load(str(paths.model))
        summary["model_version"] = tracker.log_keras_model(best_model, model_name, audio)
        summary["model_name"] = model_name if summary["model_version"] else None
    tracker.end()


def main(args) -> None:
    params = config.load_params(args.params)
    cfg = netlib.ModelConfig.from_params(params)
    tc = TrainConfig.from_params(params)
    model_name = config.TrackingConfig.from_params(params).model_name
    data, paths = Data.open(args.data, params, args.codebook), Paths.from_args(args)
    fp = fingerprint(dict(params["train"]), data.tensors, data.audio)
    norm = Normaliser.for_params(data.tensors, params)

    threads = configure_threads(tc.threads)   # after the cheap checks: importing TF takes seconds
    if not tc.threads:
        log.info("training with %d thread(s) per op: the cores free now (train.threads: 0)",
                 threads)
    strategy = distribution_strategy(tc.strategy)
    if tc.strategy != "default":
        log.info("tf.distribute %s: %d replica(s)", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    model, state, first_epoch = start_or_resume(cfg, tc, data, norm, paths, fp, strategy)
    tracker = start_tracking(params, data, state, paths)
    train_seconds = fit(model, state, first_epoch, tc, cfg, data, norm, paths, tracker)
    summary = summarise(state, cfg, data, tracker)
    summary["threads"] = threads                  # what train.threads (0: the free cores) gave
    tracker.set_tags({"rawtune.threads": str(threads)})
    finish(summary, state, cfg, data, paths, tracker, train_seconds, model_name)
    files.write_json(paths.metrics, summary)
    shutil.rmtree(paths.ckpt_dir, ignore_errors=True)       # done: nothing left to resume
    best = state.history[state.best_epoch]
    log.info("model -> %s (epoch %d, val_loss %s); MLflow run %s", paths.model, best["epoch"],
             best["val_loss"], tracker.run_id or "not tracked")


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--data", default="data/processed",
                        help="the tensors stage's folder (default: %(default)s)")
    parser.add_argument("--codebook", default="data/codebook",
                        help="the codebook stage's folder (default: %(default)s)")
    parser.add_argument("--models", default="models", help="model folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/train.json",
                        help="summary metrics (default: %(default)s)")
    parser.add_argument("--history", default="metrics/train_history.csv",
                        help="per-epoch CSV for `dvc plots` (default: %(default)s)")
    parser.add_argument("--plot", default="metrics/train_curve.png",
                        help="training-curve PNG (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
