"""The networks, in Keras 3, by `train.family`:

  regression  the seed's: per-time-step Dense -> LSTM/GRU x layers -> Dense, the next (normalised)
              block or frame itself, trained with `train.loss` (mse or mae); deterministic.
  laplace     the same layers with twice the outputs: a Laplace distribution (mean and log-scale)
              of each feature of the next frame, trained by its negative log-likelihood; sampled.
  codebook    Embedding of a code -> LSTM/GRU x layers -> Dense logits over the codebook's codes:
              a categorical distribution of the next code, trained by cross-entropy; sampled.

Every family names its layers `encode`, the recurrent ones, and `decode`. `train` builds and
compiles it from params.yaml `train:`; `generate` rebuilds the same layers as a one-step model
that carries the recurrent state. A saved model carries the audio settings of the data it was
trained on (`rawtune_audio.json` inside the .keras file, `rawtune_audio` in an MLflow model's
metadata), and `load` returns them beside the model.
"""
from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from stages import config
from stages.config import AudioConfig, UserError

# TensorFlow's C++ chatter (start-up notices; "oneDNN supports DT_INT32 only ..." on some CPUs);
# its real failures still reach Python as exceptions
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CELLS = ("lstm", "gru")
FAMILIES = ("regression", "laplace", "codebook")
LOSSES = ("mse", "mae")
OPTIMIZERS = ("rmsprop", "adam", "sgd")
PRECISIONS = ("float32", "mixed_bfloat16")
CODE_INITS = ("geometry", "random")


def import_keras():
    """Import TensorFlow and Keras with the C++ start-up notices (absl, oneDNN) kept off the
    terminal: TensorFlow 2.21 prints them regardless of TF_CPP_MIN_LOG_LEVEL. Keras's
    scikit-learn wrappers (never used here) are imported without scikit-learn, which MLflow
    installs: importing it (and scipy.stats with it) cost ~1.3 s of every stage that uses Keras.
    An import that fails still raises as usual."""
    if "keras" not in sys.modules:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        sys.stderr.flush()
        os.dup2(devnull, 2)
        hide_sklearn = "sklearn" not in sys.modules
        if hide_sklearn:
            sys.modules["sklearn"] = None           # `import sklearn` raises ImportError
        try:
            import tensorflow  # noqa: F401
            import keras  # noqa: F401
        finally:
            if hide_sklearn:
                del sys.modules["sklearn"]          # importable again for anyone who needs it
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    if not LOSS_FUNCTIONS:
        _register(sys.modules["keras"])
    return sys.modules["keras"]


def set_threads(threads: int) -> int:
    """TensorFlow's threads per op (`threads`; 0 leaves TensorFlow's choice, every core) and
    ops at once (at most 2), before its first op; once TensorFlow runs (a second stage called
    in the same process) its threads stay as they are. Returns the threads per op in use."""
    import_keras()
    import tensorflow as tf
    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:               # "cannot be modified after initialization"
            pass
    return tf.config.threading.get_intra_op_parallelism_threads() or config.usable_cores()


LOG_SCALE_BOUND = 7.0     # |log b| of the Laplace head is clipped here (batches.elementwise too)


def _register(keras) -> None:
    """The Laplace loss, registered so that a checkpoint compiled with it loads again."""
    @keras.saving.register_keras_serializable(package="rawtune", name="laplace_nll")
    def laplace_nll(y_true, y_pred):
        """Negative log-likelihood (without log 2) of y_true under Laplace(mu, b) per feature,
        y_pred = [mu, log b]."""
        ops = keras.ops
        mu, log_b = ops.split(y_pred, 2, axis=-1)
        log_b = ops.clip(log_b, -LOG_SCALE_BOUND, LOG_SCALE_BOUND)
        return ops.mean(ops.abs(y_true - mu) * ops.exp(-log_b) + log_b, axis=-1)
    LOSS_FUNCTIONS["laplace"] = laplace_nll

    @keras.saving.register_keras_serializable(package="rawtune", name="CodeNoise")
    class CodeNoise(keras.layers.Layer):
        """While training, each input code is replaced by a code drawn uniformly from all
        `codes` with probability `rate`: the model learns to go on from codes it did not expect,
        as it must from its own draws. The identity otherwise."""
        def __init__(self, codes: int, rate: float, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.codes, self.rate, self.seed = codes, rate, seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, inputs, training=None):
            if not training or self.rate <= 0:
                return inputs
            ops = keras.ops
            swap = keras.random.uniform(ops.shape(inputs), seed=self.generator) < self.rate
            drawn = keras.random.randint(ops.shape(inputs), 0, self.codes, dtype=inputs.dtype,
                                         seed=self.generator)
            return ops.where(swap, drawn, inputs)

        def get_config(self):
            return {**super().get_config(), "codes": self.codes, "rate": self.rate,
                    "seed": self.seed}
    LAYERS["CodeNoise"] = CodeNoise


LOSS_FUNCTIONS: dict = {}
LAYERS: dict = {}


@dataclass(frozen=True)
class ModelConfig:
    family: str = "regression"
    cell: str = "lstm"
    hidden: int = 1024
    layers: int = 1
    dropout: float = 0.0
    loss: str = "mse"
    optimizer: str = "rmsprop"
    learning_rate: float = 0.001
    precision: str = "float32"
    jit_compile: bool = False
    input_noise: float = 0.0
    code_init: str = "random"

    @classmethod
    def from_params(cls, params: dict) -> "ModelConfig":
        p = config.section(params, "train", cls)
        dropout = p("dropout", (int, float), minimum=0, below=1)
        lr = p("learning_rate", (int, float), above=0)
        return cls(family=p("family", str, FAMILIES), cell=p("cell", str, CELLS), hidden=p("hidden", int, minimum=1),
                   layers=p("layers", int, minimum=1), dropout=float(dropout),
                   loss=p("loss", str, LOSSES), optimizer=p("optimizer", str, OPTIMIZERS),
                   learning_rate=float(lr), precision=p("precision", str, PRECISIONS),
                   jit_compile=p("jit_compile", bool),
                   input_noise=float(p("input_noise", (int, float), minimum=0)),
                   code_init=p("code_init", str, CODE_INITS))

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def objective(self) -> str:
        """What the training loss is: mse | mae (regression), laplace, codebook."""
        return self.loss if self.family == "regression" else self.family


def build_model(cfg: ModelConfig, seq_len: int | None, n_features: int):
    """The training model: (batch, seq_len, n_features) -> (batch, seq_len, n_features), twice
    that for a Laplace head; for the codebook family n_features is the number of codes and the
    input is (batch, seq_len) codes."""
    keras = import_keras()
    keras.mixed_precision.set_global_policy(cfg.precision)
    rnn = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cfg.cell]
    if cfg.family == "codebook":
        inputs = keras.Input((seq_len,), dtype="int32", name="codes")
        h = inputs
        if cfg.input_noise > 0:   # training only: some input codes replaced by random ones
            h = LAYERS["CodeNoise"](n_features, cfg.input_noise, name="input_noise")(h)
        h = keras.layers.Embedding(n_features, cfg.hidden, name="encode")(h)
    else:
        inputs = keras.Input((seq_len, n_features), name="blocks")
        # Dense on a (batch, time, features) tensor is applied to every time step: the seed's
        # TimeDistributed(Dense), without TimeDistributed's reshape, which Keras 3 gets wrong when
        # one model is called on sequences of different lengths (tests/test_train.py).
        h = inputs
        if cfg.input_noise > 0:   # training only: teaches the model to recover from its errors
            h = keras.layers.GaussianNoise(cfg.input_noise, name="input_noise")(h)
        h = keras.layers.Dense(cfg.hidden, name="encode")(h)
    for i in range(cfg.layers):
        h = rnn(cfg.hidden, return_sequences=True, dropout=cfg.dropout, name=f"{cfg.cell}_{i}")(h)
    # the output stays float32 under mixed precision: the loss and the saved blocks need it
    n_out = 2 * n_features if cfg.family == "laplace" else n_features
    outputs = keras.layers.Dense(n_out, dtype="float32", name="decode")(h)
    return keras.Model(inputs, outputs, name=f"rawtune_{cfg.cell}")


def compile_model(model, cfg: ModelConfig) -> None:
    keras = import_keras()
    opt = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
           "sgd": keras.optimizers.SGD}[cfg.optimizer](learning_rate=cfg.learning_rate)
    loss = {"codebook": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "laplace": LOSS_FUNCTIONS.get("laplace")}.get(cfg.family, cfg.loss)
    model.compile(optimizer=opt, loss=loss, jit_compile=cfg.jit_compile)


def flops_per_sequence(cfg: ModelConfig, seq_len: int, n_features: int) -> float:
    """Multiply-add FLOPs of one training step on one sequence (forward + backward ~ 3x forward),
    counting the matrix products only."""
    gates = {"lstm": 4, "gru": 3}[cfg.cell]
    outputs = 2 * n_features if cfg.family == "laplace" else n_features
    inputs = 0 if cfg.family == "codebook" else n_features              # an embedding is a lookup
    per_block = 2 * (inputs + outputs) * cfg.hidden                     # encode + decode
    per_block += cfg.layers * 2 * gates * 2 * cfg.hidden * cfg.hidden  # input + recurrent kernels
    return 3.0 * seq_len * per_block


# --- saving and loading, with the audio settings -------------------------------------------------

AUDIO_ENTRY = "rawtune_audio.json"   # inside the .keras zip; Keras ignores entries it does not know


def save(model, path: str | Path, audio: AudioConfig | None, with_optimizer: bool = False) -> None:
    """Save atomically (Keras wants the .keras suffix, so the temp name keeps it), with the audio
    settings inside. Without the optimizer, the saved model is an uncompiled view of the same
    layers: half the size."""
    keras = import_keras()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    target = model if with_optimizer else keras.Model(model.inputs, model.outputs,
                                                       name=model.name)
    try:
        target.save(tmp)
        if audio is not None:
            with zipfile.ZipFile(tmp, "a") as z:
                z.writestr(AUDIO_ENTRY, json.dumps(audio.as_dict(), sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_tmp(folder: Path) -> None:
    """Leftovers of a `save` killed half-way."""
    if folder.is_dir():
        for leftover in folder.glob(".*.tmp.keras"):
            leftover.unlink(missing_ok=True)


def saved_audio(path: str | Path) -> AudioConfig | None:
    """The audio settings saved in a .keras file (None for a model saved without them)."""
    try:
        with zipfile.ZipFile(path) as z:
            return AudioConfig.from_dict(json.loads(z.read(AUDIO_ENTRY)))
    except (KeyError, zipfile.BadZipFile, ValueError, TypeError):
        return None


def load(source: str, tracking: config.TrackingConfig | None = None):
    """A trained model and its audio settings (None when it has none) from a .keras file or an
    MLflow model URI (models:/name@alias, models:/name/version, runs:/...)."""
    if source.startswith(("models:/", "runs:/")):
        from stages import registry
        if tracking is None:
            raise UserError(f"MLflow model '{source}' needs a tracking store to load from.")
        return registry.load_model(source, tracking.uri)
    if not Path(source).is_file():
        raise UserError(f"No trained model at '{source}'; run `dvc repro train` first.")
    keras = import_keras()
    try:
        model = keras.saving.load_model(source, safe_mode=True)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise UserError(f"'{source}' is not a model saved by `train` ({type(err).__name__}).") from err
    return model, saved_audio(source)
