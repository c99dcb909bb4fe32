"""Training data as tf.data pipelines over the memory-mapped tensors, and the trivial baselines.

Nothing here loads a tensor file whole: batches are copied out of memory maps (`read(part)` of
`Tensors` or of a codebook's `Codes`) row by row, normalised on the fly with the training `_mean`/`_var`, and prefetched. The order of
each epoch is a permutation drawn from (shuffle seed, epoch), so a resumed run sees exactly the
batches an uninterrupted one would have seen.
"""
from __future__ import annotations

import numpy as np

from stages import config
from stages.config import UserError
from stages.model import LOG_SCALE_BOUND
from stages.tensor_files import Tensors


class Normaliser:
    """(block - mean) / sqrt(var) per feature, and back; identity when disabled."""

    def __init__(self, mean: np.ndarray, var: np.ndarray, enabled: bool = True):
        n = mean.shape[-1]
        self.enabled = enabled
        self.train_mean = mean.astype(np.float32)
        self.mean = mean.astype(np.float32) if enabled else np.zeros(n, np.float32)
        self.std = np.sqrt(var).astype(np.float32) if enabled else np.ones(n, np.float32)

    @classmethod
    def for_params(cls, tensors: Tensors, params: dict) -> "Normaliser":
        """The tensors' statistics, applied when params.yaml `train.normalise` says so (the one
        reader of that setting: train, generate and the champion comparison all use it)."""
        return cls.load(tensors, config.param(params, "train.normalise", bool))

    @classmethod
    def load(cls, tensors: Tensors, enabled: bool = True) -> "Normaliser":
        return cls(np.load(tensors.path("mean"), allow_pickle=False),
                   np.load(tensors.path("var"), allow_pickle=False), enabled)

    def forward(self, blocks: np.ndarray) -> np.ndarray:
        return ((blocks - self.mean) / self.std).astype(np.float32)

    def inverse(self, blocks: np.ndarray) -> np.ndarray:
        return (blocks * self.std + self.mean).astype(np.float32)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sequence order of one epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class EpochClock:
    """Which epoch the training loop is in; a Keras callback sets it, the batch source reads it."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch


def _rows(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(idx)                      # ascending reads from the map; the order in a batch
    return np.asarray(x[idx]), np.asarray(y[idx])   # does not matter to the loss


def dataset(tensors, split: str, batch_size: int, norm: Normaliser | None,
            clock: EpochClock | None = None, seed: int = 0):
    """A tf.data pipeline of normalised (x, y) batches from the `split` ("" train, "val_") arrays
    of `tensors` (a `Tensors`, or a codebook's `Codes`: sequences of codes, never normalised).
    With a `clock`, each pass is shuffled by `epoch_order(n, seed, clock.epoch)`; without one the
    order is the file's (validation)."""
    from stages.model import import_keras
    import_keras()
    import tensorflow as tf
    x, y = tensors.read(f"{split}x"), tensors.read(f"{split}y")
    n = x.shape[0]
    codes = x.ndim == 2                       # (n, seq_len) codes, else (n, seq_len, n_features)

    def batches():
        order = epoch_order(n, seed, clock.epoch) if clock is not None else np.arange(n)
        for start in range(0, n, batch_size):
            xs, ys = _rows(x, y, order[start:start + batch_size])
            yield (xs.astype(np.int32), ys.astype(np.int32)) if codes else (xs, ys)

    spec = tf.TensorSpec((None,) + x.shape[1:], tf.int32 if codes else tf.float32)
    ds = tf.data.Dataset.from_generator(batches, output_signature=(spec, spec))
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size)))
    if norm is not None and norm.enabled and not codes:
        mean, inv_std = tf.constant(norm.mean), tf.constant(1.0 / norm.std)
        ds = ds.map(lambda a, b: ((a - mean) * inv_std, (b - mean) * inv_std),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(2)


# --- trivial predictors -----------------------------------------------------------------------

BASELINES = ("zero_block", "repeat_last", "train_mean")


def elementwise(loss: str):
    """(target, prediction) -> the loss of each element, as Keras computes it before averaging:
    mse, mae, or laplace (the prediction holds the mean and the log-scale of each feature)."""
    if loss == "mse":
        return lambda t, p: (t - p) ** 2
    if loss == "mae":
        return lambda t, p: np.abs(t - p)

    def laplace(t, p):
        mu, log_b = np.split(p, 2, axis=-1)
        log_b = np.clip(log_b, -LOG_SCALE_BOUND, LOG_SCALE_BOUND)
        return np.abs(t - mu) * np.exp(-log_b) + log_b
    return laplace


def streamed_losses(tensors: Tensors, predictors: dict, norm: Normaliser, loss: str = "mse",
                    split: str = "val_", chunk: int = 16) -> dict[str, float]:
    """The loss of each predictor (raw x chunk -> prediction in `norm`'s units) against the
    normalised y of the split, averaged over every element as Keras averages a model's loss;
    streamed in chunks of sequences, so no split is ever loaded whole."""
    x, y = tensors.read(f"{split}x"), tensors.read(f"{split}y")
    err = elementwise(loss)
    sums = dict.fromkeys(predictors, 0.0)
    count = 0
    for start in range(0, x.shape[0], chunk):
        xs = np.asarray(x[start:start + chunk])
        target = norm.forward(np.asarray(y[start:start + chunk]))
        for name, predict in predictors.items():
            sums[name] += float(err(target, predict(xs)).sum(dtype=np.float64))
        count += target.size
    if count == 0:
        return {}
    return {k: v / count for k, v in sums.items()}


def baseline_losses(tensors: Tensors, norm: Normaliser, loss: str = "mse", split: str = "val_",
                    chunk: int = 16) -> dict[str, float]:
    """The loss, in the space the model is trained in, of three predictors that learn nothing:
    the zero block (silence), the last block repeated (y_t = x_t) and the training mean. For a
    Laplace head each is given its best single scale b (the mean absolute error), so its loss
    is 1 + log(mean absolute error)."""
    zero_pred = norm.forward(np.zeros_like(norm.mean))
    mean_pred = norm.forward(norm.train_mean)
    losses = streamed_losses(tensors, {"zero_block": lambda xs: zero_pred,
                                       "repeat_last": norm.forward,
                                       "train_mean": lambda xs: mean_pred},
                             norm, "mae" if loss == "laplace" else loss, split, chunk)
    if loss == "laplace":
        return {k: 1.0 + float(np.log(max(v, 1e-12))) for k, v in losses.items()}
    return losses


def code_baselines(codes, split: str = "val_", chunk: int = 256) -> dict[str, float]:
    """Cross-entropy (nats per code) on the split's codes of predictors that learn nothing: the
    training songs' code frequencies (`train_mean`), and the last code repeated with the
    probability the training songs repeat one, the rest by frequency (`repeat_last`)."""
    n_codes = codes.n_codes
    counts = np.ones(n_codes)                              # add-one smoothing
    repeats = total = 0
    x, y = codes.read("x"), codes.read("y")
    for start in range(0, x.shape[0], chunk):
        xs, ys = np.asarray(x[start:start + chunk]), np.asarray(y[start:start + chunk])
        counts += np.bincount(ys.reshape(-1), minlength=n_codes)
        repeats, total = repeats + int((xs == ys).sum()), total + ys.size
    unigram = counts / counts.sum()
    stay = min(max(repeats / max(total, 1), 1e-6), 1 - 1e-6)
    sums = dict(train_mean=0.0, repeat_last=0.0)
    count = 0
    x, y = codes.read(f"{split}x"), codes.read(f"{split}y")
    for start in range(0, x.shape[0], chunk):
        xs, ys = np.asarray(x[start:start + chunk]), np.asarray(y[start:start + chunk])
        sums["train_mean"] -= float(np.log(unigram[ys]).sum())
        p = (1 - stay) * unigram[ys] + stay * (xs == ys)
        sums["repeat_last"] -= float(np.log(p).sum())
        count += ys.size
    return {k: v / count for k, v in sums.items()} if count else {}


def model_loss(model, model_norm: Normaliser, tensors: Tensors, current: Normaliser,
               loss: str = "mse", chunk: int = 16) -> float:
    """A model's validation loss in `current`'s normalised units: it reads the songs through its
    own normalisation (`model_norm`, from its training run), its prediction is de-normalised with
    those statistics and re-normalised with the current ones, so a model trained before new songs
    changed the statistics is judged on equal terms. For a model trained on the current data this
    is the `val_loss` its training reported."""
    if tensors.n_sequences("val_") == 0:
        raise UserError(f"'{tensors.folder}' holds no validation sequences; a model can "
                        "only be scored with at least two songs.")

    def predict(xs: np.ndarray) -> np.ndarray:
        pred = np.asarray(model.predict_on_batch(model_norm.forward(xs)))
        if loss != "laplace":
            return current.forward(model_norm.inverse(pred))
        mu, log_b = np.split(pred, 2, axis=-1)       # the scale follows the units' change too
        return np.concatenate([current.forward(model_norm.inverse(mu)),
                               log_b + np.log(model_norm.std / current.std)], axis=-1)
    return streamed_losses(tensors, {"model": predict}, current, loss, "val_", chunk)["model"]


def code_model_loss(model, codes, chunk: int = 16) -> float:
    """A codebook model's validation cross-entropy (nats per code) on the split's codes, as
    Keras's sparse categorical cross-entropy averages it."""
    if codes.n_sequences("val_") == 0:
        raise UserError(f"'{codes.folder}' holds no validation sequences; a model can "
                        "only be scored with at least two songs.")
    x, y = codes.read("val_x"), codes.read("val_y")
    total, count = 0.0, 0
    for start in range(0, x.shape[0], chunk):
        logits = np.asarray(model.predict_on_batch(np.asarray(x[start:start + chunk], np.int32)),
                            np.float64)
        ys = np.asarray(y[start:start + chunk], np.int64)
        top = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
        total += float((log_z - np.take_along_axis(logits, ys[..., None], -1)[..., 0]).sum())
        count += ys.size
    return total / count
