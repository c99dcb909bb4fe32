"""Stage `generate`: new songs from the trained model, one block at a time.

The trained network's own layers are stepped one block at a time carrying the recurrent state
(each LSTM/GRU layer's cell, inside one `tf.function`), so a song of n blocks costs n steps; the
seed re-predicted the whole growing sequence for every new block. The state is first warmed up
on `seed_blocks` blocks of a training or validation sequence, or of the user's own audio file.
Predicted blocks are de-normalised with the training mean/variance, turned back into samples with
the inverse of `fft_blocks.pack`, joined (optionally cross-faded), clipped to [-1, 1] (the clipped
fraction is logged; never an int16 wrap-around) and written as 16-bit WAV, atomically, with a
spectrogram PNG beside each song.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages import arrays, audio, config, fft_blocks, files, model as netlib
from stages.batches import Normaliser, Tensors
from stages.config import UserError

log = logging.getLogger("rawtune")

SEED_SOURCES = ("train", "val", "file")
FORMATS = ("wav", "mp3")


@dataclass(frozen=True)
class GenerateConfig:
    model: str
    seconds: float
    n_songs: int
    seed_source: str
    seed_file: str
    seed_blocks: int
    temperature: float
    random_seed: int
    crossfade: int
    format: str

    @classmethod
    def from_params(cls, params: dict) -> "GenerateConfig":
        p = lambda key, *a, **k: config.param(params, f"generate.{key}", *a, **k)  # noqa: E731
        seconds = p("seconds", (int, float))
        if seconds <= 0:
            raise UserError(f"params.yaml 'generate.seconds' must be above 0, got {seconds}.")
        cfg = cls(model=p("model", str), seconds=float(seconds), n_songs=p("n_songs", int, minimum=1),
                  seed_source=p("seed_source", str, SEED_SOURCES), seed_file=p("seed_file", str),
                  seed_blocks=p("seed_blocks", int, minimum=1),
                  temperature=float(p("temperature", (int, float), minimum=0)),
                  random_seed=p("random_seed", int), crossfade=p("crossfade", int, minimum=0),
                  format=p("format", str, FORMATS))
        if cfg.seed_source == "file" and not cfg.seed_file:
            raise UserError("params.yaml 'generate.seed_source' is 'file' but "
                            "'generate.seed_file' is empty; name an audio file.")
        return cfg


# --- the model, one step at a time -------------------------------------------------------------

def load_model(source: str):
    """A trained model from a .keras file or an MLflow model URI (models:/name@alias)."""
    keras = netlib.import_keras()
    if source.startswith(("models:/", "runs:/")):
        import mlflow
        try:
            return mlflow.keras.load_model(source, load_model_kwargs={"safe_mode": True})
        except Exception as err:  # noqa: BLE001 - any registry failure is the user's to fix
            raise UserError(f"MLflow model '{source}' could not be loaded "
                            f"({type(err).__name__}); check the name and alias.") from err
    if not Path(source).is_file():
        raise UserError(f"No trained model at '{source}'; run `dvc repro train` first.")
    return keras.saving.load_model(source, safe_mode=True)


class Stepper:
    """The trained network as a one-block step: (block, states) -> (next block, states)."""

    def __init__(self, model):
        import tensorflow as tf
        unwrap = lambda layer: getattr(layer, "layer", layer)  # noqa: E731 (TimeDistributed)
        self.encode = unwrap(model.get_layer("encode"))
        self.decode = unwrap(model.get_layer("decode"))
        self.rnns = [layer for layer in model.layers if hasattr(layer, "cell")]
        if not self.rnns:
            raise UserError("The model has no recurrent layer; it was not made by `train`.")
        self.n_features = self.decode.units
        self.step = tf.function(self._step, reduce_retracing=True)
        self.loop = tf.function(self._loop, reduce_retracing=True)

    def initial_states(self, batch: int) -> list:
        import tensorflow as tf
        states = []
        for rnn in self.rnns:
            size = rnn.cell.state_size
            sizes = size if isinstance(size, (list, tuple)) else [size]
            states.append([tf.zeros((batch, s)) for s in sizes])
        return states

    def _step(self, block, states):
        h = self.encode(block)
        new_states = []
        for rnn, state in zip(self.rnns, states):
            h, state = rnn.cell(h, state if len(state) > 1 else state[0], training=False)
            new_states.append(list(state) if isinstance(state, (list, tuple)) else [state])
        return self.decode(h), new_states

    def _loop(self, block, states, n_blocks, temperature, noise_seed):
        """`n_blocks` closed-loop steps in one graph: add noise, keep the block, predict the
        next from it. Returns (batch, n_blocks, features)."""
        import tensorflow as tf
        made = tf.TensorArray(tf.float32, size=n_blocks)

        def body(t, block, states, made):
            noise = tf.random.stateless_normal(tf.shape(block), seed=tf.stack([noise_seed, t]))
            block = block + temperature * noise
            made = made.write(t, block)
            block, states = self._step(block, states)
            return t + 1, block, states, made

        _, _, _, made = tf.while_loop(lambda t, *_: t < n_blocks, body,
                                      (tf.constant(0), block, states, made))
        return tf.transpose(made.stack(), [1, 0, 2])

    def run(self, blocks: np.ndarray, states=None):
        """Teacher-forced steps over (batch, n, features): the outputs after each input block."""
        import tensorflow as tf
        states = states or self.initial_states(blocks.shape[0])
        outs = []
        for t in range(blocks.shape[1]):
            y, states = self.step(tf.constant(blocks[:, t]), states)
            outs.append(y.numpy())
        return np.stack(outs, axis=1), states


def generate_blocks(stepper: Stepper, seed: np.ndarray, n_blocks: int, temperature: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Warm the state up on the seed blocks (batch, k, features), then feed each prediction back
    for `n_blocks` steps, adding N(0, temperature) noise in normalised space (drawn from `rng`'s
    seed, so a run is reproducible). Returns the new blocks (batch, n_blocks, features),
    normalised. The closed loop runs as one TensorFlow graph: no Python work per block."""
    import tensorflow as tf
    outs, states = stepper.run(seed)
    noise_seed = int(rng.integers(2 ** 31 - 1))
    made = stepper.loop(tf.constant(outs[:, -1]), states, tf.constant(n_blocks),
                        tf.constant(float(temperature)), tf.constant(noise_seed, tf.int32))
    return made.numpy()


# --- from blocks to audio ----------------------------------------------------------------------

def blocks_to_samples(blocks: np.ndarray, layout: str, block_size: int, crossfade: int) -> np.ndarray:
    """(n_blocks, features) spectra -> samples. With `crossfade` > 0 each block edge is blended
    over that many samples (equal-power), which removes the click of a hard joint."""
    frames = fft_blocks.unpack(blocks, layout, block_size)          # (n_blocks, block_size)
    if crossfade <= 0 or len(frames) == 1:
        return frames.reshape(-1)
    c = min(crossfade, block_size // 2)
    fade_in = np.sin(np.linspace(0, np.pi / 2, c, dtype=np.float32)) ** 2
    out = frames[0].copy()
    for frame in frames[1:]:
        out[-c:] = out[-c:] * (1 - fade_in) + frame[:c] * fade_in
        out = np.concatenate([out, frame[c:]])
    return out


def peak_safe(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Clip to [-1, 1]; return the samples and the fraction that had to be clipped."""
    over = np.abs(samples) > 1.0
    return np.clip(samples, -1.0, 1.0).astype(np.float32), float(over.mean()) if len(samples) else 0.0


def write_song(samples: np.ndarray, path: Path, sample_rate: int, fmt: str) -> None:
    import soundfile as sf
    with files.atomic_path(path) as tmp:
        if fmt == "mp3":
            sf.write(str(tmp), samples, sample_rate, format="MP3")
        else:
            sf.write(str(tmp), audio.to_int16(samples)[0], sample_rate, subtype="PCM_16",
                     format="WAV")


# --- seeds ---------------------------------------------------------------------------------------

def seed_from_tensors(tensors: Tensors, split: str, k: int, n_songs: int,
                      rng: np.random.Generator, norm: Normaliser) -> tuple[np.ndarray, list[int]]:
    """The first k blocks of n_songs sequences drawn at random (normalised)."""
    x = arrays.read(tensors.path(f"{split}x"))
    if x.shape[0] == 0:
        raise UserError(f"'{tensors.path(f'{split}x')}' holds no sequences to seed from; use "
                        "'generate.seed_source: train' or add songs.")
    if k > x.shape[1]:
        raise UserError(f"params.yaml 'generate.seed_blocks' is {k} but training sequences have "
                        f"{x.shape[1]} blocks; use at most {x.shape[1]}.")
    picks = sorted(rng.choice(x.shape[0], size=n_songs, replace=x.shape[0] < n_songs).tolist())
    return norm.forward(np.asarray(x[picks, :k])), picks


def seed_from_file(path: str, k: int, n_songs: int, sample_rate: int, scale: float,
                   block_size: int, layout: str, norm: Normaliser) -> np.ndarray:
    """The first k blocks of the user's own audio file, decoded exactly as training songs are."""
    import soundfile as sf
    src = Path(path)
    if not src.is_file():
        raise UserError(f"Seed file '{path}' (generate.seed_file) not found.")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "seed.wav"
        try:
            audio.decode_to_wav(src, wav, sample_rate)
        except audio.AudioError as err:
            raise UserError(f"Seed file '{path}' {err}.") from err
        samples = sf.read(str(wav), dtype="int16")[0].astype(np.float32) / scale
    blocks = fft_blocks.pack(fft_blocks.to_blocks(samples, block_size), layout)
    if len(blocks) < k:
        raise UserError(f"Seed file '{path}' has {len(blocks)} block(s) of {block_size} samples; "
                        f"'generate.seed_blocks' asks for {k}.")
    return np.repeat(norm.forward(blocks[:k])[None], n_songs, axis=0)


# --- the stage ---------------------------------------------------------------------------------

def segment_levels(samples: np.ndarray, sample_rate: int, seconds: float = 10.0) -> list[float]:
    """RMS level in dBFS of each `seconds`-long segment: does the song fade or blow up later?"""
    n = max(1, int(seconds * sample_rate))
    return [round(float(10 * np.log10(np.mean(samples[i:i + n] ** 2) + 1e-12)), 2)
            for i in range(0, len(samples), n)]


def train_run_id(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("mlflow_run_id")
    except (OSError, ValueError):
        return None


def main(args) -> None:
    import time
    from stages import plots, tracking
    params = config.load_params(args.params)
    cfg = GenerateConfig.from_params(params)
    block_size = config.param(params, "fft_blocks.block_size", int, minimum=1)
    layout = config.param(params, "fft_blocks.fft", str, fft_blocks.LAYOUTS)
    sample_rate = config.param(params, "decode.sample_rate", int, minimum=1)
    scale = config.param(params, "wav_to_npy.scale", (int, float))
    normalise = config.param(params, "train.normalise", bool)
    tensors = Tensors(Path(args.data), config.param(params, "tensors.name", str))
    tensors.check()
    model_source = args.model or cfg.model
    n_feat = tensors.shape()[1]
    if n_feat != fft_blocks.n_features(block_size, layout):
        raise UserError(f"The tensors have {n_feat} features but params.yaml's fft_blocks settings "
                        f"make {fft_blocks.n_features(block_size, layout)}; run `dvc repro` first.")

    model = load_model(model_source)
    stepper = Stepper(model)
    if stepper.n_features != n_feat:
        raise UserError(f"The model '{model_source}' predicts {stepper.n_features} features but the "
                        f"tensors have {n_feat}; run `dvc repro train` first.")
    norm = Normaliser.load(tensors, normalise)
    rng = np.random.default_rng(cfg.random_seed)
    if cfg.seed_source == "file":
        seed = seed_from_file(cfg.seed_file, cfg.seed_blocks, cfg.n_songs, sample_rate, scale,
                              block_size, layout, norm)
        seeds = [cfg.seed_file] * cfg.n_songs
    else:
        split = "" if cfg.seed_source == "train" else "val_"
        seed, picks = seed_from_tensors(tensors, split, cfg.seed_blocks, cfg.n_songs, rng, norm)
        seeds = [f"{cfg.seed_source} sequence {i}" for i in picks]

    n_blocks = math.ceil(cfg.seconds * sample_rate / block_size)
    log.info("generating %d song(s) of %d blocks (%.1f s) from %d seed block(s), temperature %g",
             cfg.n_songs, n_blocks, n_blocks * block_size / sample_rate, cfg.seed_blocks,
             cfg.temperature)
    t0 = time.perf_counter()
    made = generate_blocks(stepper, seed, n_blocks, cfg.temperature, rng)
    wall = time.perf_counter() - t0

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files.remove_stale_tmp(out_dir)
    for old in out_dir.glob("song_*"):
        old.unlink()
    songs = []
    for i in tqdm(range(cfg.n_songs), desc="generate: writing", unit="song", disable=None,
                  leave=False):   # WAV/MP3 + spectrogram; quiet when not a terminal
        samples = blocks_to_samples(norm.inverse(made[i]), layout, block_size, cfg.crossfade)
        samples = samples[: int(round(cfg.seconds * sample_rate))]
        samples, clipped = peak_safe(samples)
        path = out_dir / f"song_{i + 1:02d}.{cfg.format}"
        write_song(samples, path, sample_rate, cfg.format)
        plots.spectrogram(samples, sample_rate, path.with_suffix(".png"),
                          title=f"{path.name}: seeded from {seeds[i]}")
        songs.append(dict(file=path.name, seed=seeds[i], seconds=round(len(samples) / sample_rate, 3),
                          clipped_fraction=clipped, peak=float(np.abs(samples).max()),
                          rms_dbfs_per_10s=segment_levels(samples, sample_rate)))
        if clipped > 0:
            log.warning("%s: %.3f%% of the samples were above full scale and were clipped.",
                        path.name, 100 * clipped)
    audio_seconds = cfg.n_songs * n_blocks * block_size / sample_rate
    summary = dict(songs=songs, n_songs=cfg.n_songs, seconds=cfg.seconds, blocks=n_blocks,
                   generation_s=round(wall, 3), realtime_factor=round(audio_seconds / wall, 1),
                   model=model_source)
    files.write_json(args.metrics, summary)
    log.info("%d song(s) -> %s (%.1f s of audio in %.1f s: %.0fx real time)", cfg.n_songs, out_dir,
             audio_seconds, wall, audio_seconds / wall)

    tracker = tracking.join_run(params, train_run_id(Path(args.train_metrics)))
    if tracker is not None:
        tracker.log_changing_params({"generate": params["generate"]})
        tracker.log_metrics({"generate_realtime_factor": summary["realtime_factor"],
                             "generate_clipped_fraction": max(s["clipped_fraction"]
                                                              for s in songs)})
        for s in songs:
            tracker.log_artifact(out_dir / s["file"], "generated")
            tracker.log_artifact((out_dir / s["file"]).with_suffix(".png"), "generated")
        tracker.end()


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--data", default="data/processed",
                        help="the tensors stage's folder (default: %(default)s)")
    parser.add_argument("--model", default=None,
                        help="a .keras file or an MLflow model URI such as models:/rawtune@champion "
                             "(default: params.yaml generate.model)")
    parser.add_argument("--out", default="data/generated", help="output folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/generate.json",
                        help="summary of the songs made (default: %(default)s)")
    parser.add_argument("--train-metrics", default="metrics/train.json",
                        help="train's metrics, naming the MLflow run to add to (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
