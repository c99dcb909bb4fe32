"""Stage `generate`: new songs from the trained model, one block at a time.

The trained network's own layers are stepped one block at a time carrying the recurrent state
(each LSTM/GRU layer's cell, inside one `tf.function`), so a song of n blocks costs n steps; the
seed re-predicted the whole growing sequence for every new block. The state is first warmed up
on `seed_blocks` blocks of a training or validation sequence, or of the user's own audio file.
Predicted blocks are de-normalised with the training mean/variance, turned back into samples with
the inverse of the data's layout (`stages/layouts.py`), joined (optionally cross-faded), clipped to [-1, 1] (the clipped
fraction is logged; never an int16 wrap-around) and written as 16-bit WAV, atomically, with a
spectrogram PNG beside each song.

Before anything is written, the model's audio settings (saved with it by `train`) are checked
against the data's (`<name>_audio.json` beside the tensors): a model made for another rate,
scale, block size or layout is refused in one sentence naming each difference.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages import arrays, audio, config, files, layouts, model as netlib
from stages.batches import Normaliser
from stages.config import AudioConfig, UserError
from stages.tensor_files import Tensors

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
        p = config.section(params, "generate")
        seconds = p("seconds", (int, float), above=0)
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

def peak_safe(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Clip to [-1, 1]; return the samples and the fraction that had to be clipped."""
    over = np.abs(samples) > 1.0
    return np.clip(samples, -1.0, 1.0).astype(np.float32), float(over.mean()) if len(samples) else 0.0


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


def seed_from_file(path: str, k: int, n_songs: int, audio_cfg: AudioConfig,
                   norm: Normaliser) -> np.ndarray:
    """The first k blocks of the user's own audio file, decoded exactly as training songs are."""
    if not Path(path).is_file():
        raise UserError(f"Seed file '{path}' (generate.seed_file) not found.")
    try:
        samples = audio.decode_samples(path, audio_cfg.sample_rate, audio_cfg.scale)
    except audio.AudioError as err:
        raise UserError(f"Seed file '{path}' {err}.") from err
    blocks = layouts.pack(layouts.to_blocks(samples, audio_cfg.block_size), audio_cfg.layout)
    if len(blocks) < k:
        raise UserError(f"Seed file '{path}' has {len(blocks)} block(s) of {audio_cfg.block_size} "
                        f"samples; 'generate.seed_blocks' asks for {k}.")
    return np.repeat(norm.forward(blocks[:k])[None], n_songs, axis=0)


def choose_seeds(cfg: GenerateConfig, tensors: Tensors, audio_cfg: AudioConfig,
                 norm: Normaliser, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """The normalised seed blocks (n_songs, seed_blocks, features) and where each came from."""
    if cfg.seed_source == "file":
        seed = seed_from_file(cfg.seed_file, cfg.seed_blocks, cfg.n_songs, audio_cfg, norm)
        return seed, [cfg.seed_file] * cfg.n_songs
    split = "" if cfg.seed_source == "train" else "val_"
    seed, picks = seed_from_tensors(tensors, split, cfg.seed_blocks, cfg.n_songs, rng, norm)
    return seed, [f"{cfg.seed_source} sequence {i}" for i in picks]


# --- the stage ---------------------------------------------------------------------------------

def segment_levels(samples: np.ndarray, sample_rate: int, seconds: float = 10.0) -> list[float]:
    """RMS level in dBFS of each `seconds`-long segment: does the song fade or blow up later?"""
    n = max(1, int(seconds * sample_rate))
    return [round(float(10 * np.log10(np.mean(samples[i:i + n] ** 2) + 1e-12)), 2)
            for i in range(0, len(samples), n)]


def train_run_id(path: Path) -> str | None:
    return (files.read_json(path) or {}).get("mlflow_run_id")


def model_for(source: str, data: AudioConfig, tensors: Tensors, params: dict) -> "Stepper":
    """The model as a one-block step, refused (one sentence) when it was made for other audio
    than the data: other settings, or, for a model that records none, another feature count."""
    model, model_audio = netlib.load(source, config.TrackingConfig.from_params(params))
    if model_audio is not None:
        config.check_same_audio(model_audio, data, source, str(tensors.folder))
    else:
        log.warning("the model '%s' records no audio settings (saved by an older version); only "
                    "its feature count is checked against the data.", source)
    stepper = Stepper(model)
    n_feat = tensors.shape()[1]
    if stepper.n_features != n_feat:
        raise UserError(f"The model '{source}' predicts {stepper.n_features} features but the "
                        f"tensors have {n_feat}; run `dvc repro train` first.")
    return stepper


def data_settings(tensors: Tensors, wanted: AudioConfig) -> AudioConfig:
    """The audio settings of the tensors, which must be params.yaml's (else they are stale)."""
    data = tensors.audio()
    diff = data.differences(wanted)
    if diff:
        raise UserError(f"The tensors in '{tensors.folder}' were made with other audio settings "
                        f"than params.yaml's (data vs params: {'; '.join(diff)}); run `dvc repro` "
                        "first.")
    return data


def write_songs(made: np.ndarray, norm: Normaliser, audio_cfg: AudioConfig, cfg: GenerateConfig,
                out_dir: Path, seeds: list[str]) -> list[dict]:
    """Each song's blocks back to samples, peak-safe, written with a spectrogram beside it (the
    folder's earlier songs removed first); returns one summary per song."""
    from stages import plots
    rate = audio_cfg.sample_rate
    out_dir.mkdir(parents=True, exist_ok=True)
    files.remove_stale_tmp(out_dir)
    for old in out_dir.glob("song_*"):
        old.unlink()
    songs = []
    for i in tqdm(range(len(made)), desc="generate: writing", unit="song", disable=None,
                  leave=False):   # WAV/MP3 + spectrogram; quiet when not a terminal
        samples = layouts.blocks_to_samples(norm.inverse(made[i]), audio_cfg.layout, audio_cfg.block_size,
                                    cfg.crossfade)
        samples, clipped = peak_safe(samples[: int(round(cfg.seconds * rate))])
        path = audio.write_song(out_dir / f"song_{i + 1:02d}.{cfg.format}", samples, rate,
                                cfg.format)
        plots.spectrogram(samples, rate, path.with_suffix(".png"),
                          title=f"{path.name}: seeded from {seeds[i]}")
        songs.append(dict(file=path.name, seed=seeds[i], seconds=round(len(samples) / rate, 3),
                          clipped_fraction=clipped, peak=float(np.abs(samples).max()),
                          rms_dbfs_per_10s=segment_levels(samples, rate)))
        if clipped > 0:
            log.warning("%s: %.3f%% of the samples were above full scale and were clipped.",
                        path.name, 100 * clipped)
    return songs


def log_to_run(params: dict, summary: dict, out_dir: Path, train_metrics: Path) -> None:
    """Add the songs, their spectrograms and generate's params to the training run."""
    from stages import tracking
    tracker = tracking.join_run(config.TrackingConfig.from_params(params),
                                train_run_id(train_metrics))
    if tracker is None:
        return
    tracker.log_changing_params({"generate": params["generate"]})
    tracker.log_metrics({"generate_realtime_factor": summary["realtime_factor"],
                         "generate_clipped_fraction": max(s["clipped_fraction"]
                                                          for s in summary["songs"])})
    for s in summary["songs"]:
        tracker.log_artifact(out_dir / s["file"], "generated")
        tracker.log_artifact((out_dir / s["file"]).with_suffix(".png"), "generated")
    tracker.end()


def main(args) -> None:
    params = config.load_params(args.params)
    cfg = GenerateConfig.from_params(params)
    wanted = AudioConfig.from_params(params)
    tensors = Tensors.from_params(args.data, params)
    tensors.check()
    audio_cfg = data_settings(tensors, wanted)
    model_source = args.model or cfg.model
    stepper = model_for(model_source, audio_cfg, tensors, params)
    norm = Normaliser.for_params(tensors, params)
    rng = np.random.default_rng(cfg.random_seed)
    seed, seeds = choose_seeds(cfg, tensors, audio_cfg, norm, rng)

    rate, block_size = audio_cfg.sample_rate, audio_cfg.block_size
    n_blocks = math.ceil(cfg.seconds * rate / block_size)
    log.info("generating %d song(s) of %d blocks (%.1f s) from %d seed block(s), temperature %g",
             cfg.n_songs, n_blocks, n_blocks * block_size / rate, cfg.seed_blocks, cfg.temperature)
    t0 = time.perf_counter()
    made = generate_blocks(stepper, seed, n_blocks, cfg.temperature, rng)
    wall = time.perf_counter() - t0

    out_dir = Path(args.out)
    songs = write_songs(made, norm, audio_cfg, cfg, out_dir, seeds)
    audio_seconds = cfg.n_songs * n_blocks * block_size / rate
    summary = dict(songs=songs, n_songs=cfg.n_songs, seconds=cfg.seconds, blocks=n_blocks,
                   generation_s=round(wall, 3), realtime_factor=round(audio_seconds / wall, 1),
                   model=model_source, audio=audio_cfg.as_dict())
    files.write_json(args.metrics, summary)
    log.info("%d song(s) -> %s (%.1f s of audio in %.1f s: %.0fx real time)", cfg.n_songs, out_dir,
             audio_seconds, wall, audio_seconds / wall)
    log_to_run(params, summary, out_dir, Path(args.train_metrics))


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
