"""Training's commit points: the state that survives a kill (`TrainState`), the per-epoch
callback that checkpoints and commits it, and the bookkeeping that goes with it (best model,
history CSV, MLflow metrics, progress). Imports Keras, so `train` imports this only after its
cheap checks.

A commit happens every `train.checkpoint_every_s` seconds of training, and always after the last
epoch run (the last one asked for, an early stop): a checkpoint (weights + optimizer), the best
model if it changed since the last commit (kept in memory until then), then the state file,
which is the commit point, then the best model moved to models/model.keras. A kill between any
two leaves a state that points at complete files; the epochs after the last commit are redone.
Saving every epoch wrote a 250 MB checkpoint per epoch of the default model.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tqdm import tqdm

from stages import model as netlib, tracking
from stages.batches import EpochClock
from stages.config import AudioConfig
from stages.files import atomic_path, read_json, write_json

keras = netlib.import_keras()
log = logging.getLogger("rawtune")

STATE = "state.json"
CKPT_PREFIX = "epoch-"
BEST_PREFIX = "best-"


@dataclass
class TrainState:
    """Everything a resumed run needs besides the checkpoint. Epochs are counted from 0 here and
    from 1 in `history` (as Keras prints them)."""
    fingerprint: str                      # params + data: a resume needs the same
    baselines: dict = field(default_factory=dict)
    history: list = field(default_factory=list)   # one dict per finished epoch
    run_id: str | None = None             # the MLflow run
    logged_through: int = 0               # history epochs sent to MLflow
    epoch: int = -1                       # last finished epoch
    checkpoint: str | None = None         # its checkpoint file in the checkpoint folder
    wait: int = 0                         # epochs since the best
    best_loss: float | None = None
    best_epoch: int | None = None
    stopped: str | None = None            # early_stopping | time_budget | nan
    nan_epoch: int | None = None
    best_file: str | None = None          # the best model, committed, not yet models/model.keras
    saving_s: float = 0.0                 # time spent writing checkpoints and models
    bytes_written: int = 0                # their size

    def save(self, ckpt_dir: Path) -> None:
        write_json(ckpt_dir / STATE, asdict(self))

    @classmethod
    def load(cls, ckpt_dir: Path) -> "TrainState | None":
        """The committed state, or None when there is none or its checkpoint is missing."""
        saved = read_json(ckpt_dir / STATE)
        if not isinstance(saved, dict):
            return None
        try:
            state = cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})
        except TypeError:
            return None
        return state if state.checkpoint and (ckpt_dir / state.checkpoint).is_file() else None


def write_history(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "loss", "val_loss", "seconds"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def log_pending_metrics(state: TrainState, tracker: tracking.Tracker, ckpt_dir: Path) -> None:
    """Send MLflow the epochs committed but not yet logged (a kill can fall in between), with
    step = epoch (counted from 1, as Keras prints it), and note how far the log goes."""
    pending = [row for row in state.history if row["epoch"] > state.logged_through]
    if not pending or not tracker.active:
        return
    for row in pending:
        tracker.log_metrics({k: row[k] for k in ("loss", "val_loss", "seconds")},
                            step=row["epoch"])
    if tracker.active:
        state.logged_through = pending[-1]["epoch"]
        state.save(ckpt_dir)


def publish_best(state: TrainState, ckpt_dir: Path, model_path: Path) -> None:
    """Move a committed best model into place (also what a resumed run does first), and note
    in the state that it is there."""
    if not state.best_file:
        return
    if (ckpt_dir / state.best_file).is_file():
        os.replace(ckpt_dir / state.best_file, model_path)
    state.best_file = None
    state.save(ckpt_dir)


@dataclass
class Outputs:
    """Where the callback writes: checkpoints, the best model (with its audio settings), the
    history CSV; and how often it commits."""
    ckpt_dir: Path
    model_path: Path
    history_path: Path
    audio: AudioConfig | None
    every_s: float = 0.0           # seconds of training between commits; 0 = every epoch
    last_epoch: int = 0            # the last epoch asked for (counted from 0): always committed
    max_s: float = 0.0             # seconds of fitting after which training stops; 0 = no limit


class EpochEnd(keras.callbacks.Callback):
    """After each epoch: record it (patience counts epochs since the best; the best weights are
    kept in memory), and commit when the interval has passed or training ends here. Progress is
    a bar on a terminal, else one line per commit."""

    def __init__(self, state: TrainState, out: Outputs, tracker: tracking.Tracker,
                 clock: EpochClock, patience: int, has_val: bool):
        super().__init__()
        self.state, self.out, self.tracker, self.clock = state, out, tracker, clock
        self.patience, self.has_val = patience, has_val
        self.best_weights = None            # the best epoch's weights, not yet saved
        self.last_commit = time.monotonic()
        first = state.epoch + 1
        self.bar = tqdm(total=out.last_epoch + 1, initial=first, desc="train", unit="epoch",
                        disable=None, leave=False)

    def on_epoch_begin(self, epoch, logs=None):
        self.clock.epoch = epoch
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss, val = logs.get("loss"), logs.get("val_loss")
        if not all(v is not None and math.isfinite(v) for v in (loss, val if self.has_val else 0)):
            self.state.stopped, self.state.nan_epoch = "nan", epoch
            self.model.stop_training = True     # no checkpoint of the broken weights
            self.save_pending_best(self.out.model_path)
            return
        row = dict(epoch=epoch + 1, loss=float(loss), val_loss=None if val is None else float(val),
                   seconds=round(time.perf_counter() - self.t0, 3))
        if self.record(epoch, row):
            self.best_weights = self.model.get_weights()
        self.bar.update()
        self.bar.set_postfix(loss=f"{row['loss']:.4g}", val_loss=f"{row['val_loss'] or 0:.4g}")
        ends = bool(self.state.stopped) or epoch >= self.out.last_epoch
        if ends or time.monotonic() - self.last_commit >= self.out.every_s:
            self.commit(epoch)
        if self.state.stopped == "time_budget":
            log.info("%.1f minutes of training: the time budget (train.max_minutes) would be "
                     "passed by another epoch; stopping (best epoch %d)",
                     sum(r["seconds"] for r in self.state.history) / 60, self.state.best_epoch + 1)
            self.model.stop_training = True
        elif self.state.stopped:
            log.info("no val_loss improvement for %d epochs: stopping early (best epoch %d)",
                     self.patience, self.state.best_epoch + 1)
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.bar.close()

    def record(self, epoch: int, row: dict) -> bool:
        """Add the epoch to the state; returns whether it is the best so far."""
        state = self.state
        monitor = row["val_loss"] if self.has_val else row["loss"]
        improved = state.best_loss is None or monitor < state.best_loss
        state.history.append(row)
        state.wait = 0 if improved else state.wait + 1
        if improved:
            state.best_loss, state.best_epoch = monitor, epoch
        if self.patience and state.wait >= self.patience:
            state.stopped = "early_stopping"
        elif self.out.max_s and (sum(r["seconds"] for r in state.history) + row["seconds"]
                                 > self.out.max_s):          # another epoch would pass the budget
            state.stopped = "time_budget"
        return improved

    def save_pending_best(self, path: Path) -> bool:
        """Save the best weights kept in memory, as a model with the audio settings, to `path`."""
        if self.best_weights is None:
            return False
        current = self.model.get_weights()
        self.model.set_weights(self.best_weights)
        try:
            self.timed_save(path, self.out.audio, with_optimizer=False)
        finally:
            self.model.set_weights(current)
        self.best_weights = None
        return True

    def timed_save(self, path: Path, audio, with_optimizer: bool) -> None:
        t0 = time.perf_counter()
        netlib.save(self.model, path, audio, with_optimizer=with_optimizer)
        self.state.saving_s += time.perf_counter() - t0
        self.state.bytes_written += path.stat().st_size

    def commit(self, epoch: int) -> None:
        """Checkpoint, pending best model, then the state file (the commit point), then the
        best model into place, the history CSV and MLflow."""
        state, ckpt_dir = self.state, self.out.ckpt_dir
        name = f"{CKPT_PREFIX}{epoch:05d}.keras"
        self.timed_save(ckpt_dir / name, None, with_optimizer=True)
        if self.save_pending_best(ckpt_dir / f"{BEST_PREFIX}{state.best_epoch:05d}.keras"):
            state.best_file = f"{BEST_PREFIX}{state.best_epoch:05d}.keras"
        state.epoch, state.checkpoint = epoch, name
        state.save(ckpt_dir)                                  # the commit point
        publish_best(state, ckpt_dir, self.out.model_path)
        for old in [*ckpt_dir.glob(f"{CKPT_PREFIX}*.keras"), *ckpt_dir.glob(f"{BEST_PREFIX}*.keras")]:
            if old.name != name:
                old.unlink()
        write_history(self.out.history_path, state.history)
        log_pending_metrics(state, self.tracker, ckpt_dir)
        self.last_commit = time.monotonic()
        if self.bar.disable:           # no terminal: one line per commit, not one per epoch
            row = state.history[-1]
            log.info("epoch %d/%d: loss %.4g, val_loss %s (best %.4g, epoch %d)", row["epoch"],
                     self.out.last_epoch + 1, row["loss"],
                     "-" if row["val_loss"] is None else f"{row['val_loss']:.4g}",
                     state.best_loss, state.best_epoch + 1)
