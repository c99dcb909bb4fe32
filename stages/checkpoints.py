"""Training's commit points: the state that survives a kill (`TrainState`), the per-epoch
callback that checkpoints and commits it, and the bookkeeping that goes with it (best model,
history CSV, MLflow metrics). Imports Keras, so `train` imports this only after its cheap checks.

Order after each epoch: checkpoint (weights + optimizer), then the state file (the commit point),
then the best model, the history and MLflow. A kill between any two leaves a state that points at
a complete checkpoint; whatever came after the commit is redone from it.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from stages import model as netlib, tracking
from stages.batches import EpochClock
from stages.config import AudioConfig
from stages.files import atomic_path, read_json, write_json

keras = netlib.import_keras()
log = logging.getLogger("rawtune")

STATE = "state.json"
CKPT_PREFIX = "epoch-"


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
    stopped: str | None = None            # early_stopping | nan
    nan_epoch: int | None = None

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


@dataclass
class Outputs:
    """Where the callback writes: checkpoints, the best model (with its audio settings), the
    history CSV."""
    ckpt_dir: Path
    model_path: Path
    history_path: Path
    audio: AudioConfig | None


class EpochEnd(keras.callbacks.Callback):
    """After each epoch: checkpoint, then commit the state file (the resume point), then the
    best model, MLflow metrics and the history CSV. Patience counts epochs since the best."""

    def __init__(self, state: TrainState, out: Outputs, tracker: tracking.Tracker,
                 clock: EpochClock, patience: int, has_val: bool):
        super().__init__()
        self.state, self.out, self.tracker, self.clock = state, out, tracker, clock
        self.patience, self.has_val = patience, has_val

    def on_epoch_begin(self, epoch, logs=None):
        self.clock.epoch = epoch
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss, val = logs.get("loss"), logs.get("val_loss")
        if not all(v is not None and math.isfinite(v) for v in (loss, val if self.has_val else 0)):
            self.state.stopped, self.state.nan_epoch = "nan", epoch
            self.model.stop_training = True     # nothing saved from the broken weights
            return
        row = dict(epoch=epoch + 1, loss=float(loss), val_loss=None if val is None else float(val),
                   seconds=round(time.perf_counter() - self.t0, 3))
        improved = self.commit(epoch, row)
        if improved:
            netlib.save(self.model, self.out.model_path, self.out.audio)
        write_history(self.out.history_path, self.state.history)
        log_pending_metrics(self.state, self.tracker, self.out.ckpt_dir)
        if self.state.stopped:
            log.info("no val_loss improvement for %d epochs: stopping early (best epoch %d)",
                     self.patience, self.state.best_epoch + 1)
            self.model.stop_training = True

    def commit(self, epoch: int, row: dict) -> bool:
        """Checkpoint the epoch and commit the state; returns whether it is the best so far."""
        state, ckpt_dir = self.state, self.out.ckpt_dir
        monitor = row["val_loss"] if self.has_val else row["loss"]
        improved = state.best_loss is None or monitor < state.best_loss
        name = f"{CKPT_PREFIX}{epoch:05d}.keras"
        netlib.save(self.model, ckpt_dir / name, None, with_optimizer=True)
        state.history.append(row)
        state.epoch, state.checkpoint = epoch, name
        state.wait = 0 if improved else state.wait + 1
        if improved:
            state.best_loss, state.best_epoch = monitor, epoch
        if self.patience and state.wait >= self.patience:
            state.stopped = "early_stopping"
        state.save(ckpt_dir)                                  # the commit point
        for old in ckpt_dir.glob(f"{CKPT_PREFIX}*.keras"):
            if old.name != name:
                old.unlink()
        return improved
