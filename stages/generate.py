"""Stage `generate`: new songs from the trained model, one block at a time.

The trained network's own layers are stepped one block at a time carrying the recurrent state
(each LSTM/GRU layer's cell, inside one `tf.function`), so a song of n blocks costs n steps; the
seed re-predicted the whole growing sequence for every new block. The state is first warmed up
on `seed_blocks` blocks of a training or validation sequence, or of the user's own audio file.
Each new song's seed comes from another song while there are songs left; songs too short to grow
a new song from without replaying them (`seed_min_length`), and songs whose typical stretch is
`static` or a `smear` by `evaluate`'s own bars, judged on their audio (`seed_songs`), or unlike
the album's other songs (`seed_max_fd`: farther from the validation songs than the real songs
are, on `evaluate`'s frame Fréchet distance), seed new songs only after the others. A new song less tonal than the song it grows from (against that
song's median stretch) has its notes sharpened until it is as tonal (`match_tonal`: each bin
further from the mean of its neighbourhood, each frame keeping its loudness), and one that
breathes less (p90 - p10 of its frame levels) is spread around its median level until it
breathes as much (`match_dynamics`: an expander, its loud frames held under full scale).
Predicted blocks are de-normalised with the training mean/variance, turned back into samples with
the inverse of the data's layout (`stages/layouts.py`), joined (optionally cross-faded), clipped to [-1, 1] (the clipped
fraction is logged; never an int16 wrap-around) and written as 16-bit WAV, atomically, with a
spectrogram PNG beside each song.

Before anything is written, the model's audio settings (saved with it by `train`) are checked
against the data's (`<name>_audio.json` beside the tensors): a model made for another rate,
scale, block size or layout is refused in one sentence naming each difference.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from stages import audio, config, evaluate, files, layouts, model as netlib, quality
from stages.batches import Normaliser
from stages.config import AudioConfig, UserError
from stages.tensor_files import Tensors

log = logging.getLogger("rawtune")

SEED_SOURCES = ("train", "val", "file")
FORMATS = ("wav", "mp3")
CODE_FRAMES = ("nearest", "member", "centroid")
PALETTES = ("song", "all")
CUE_FROM = ("song", "louder_half")
SEED_SONGS = ("passing", "any")


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
    top_k: int
    top_p: float
    code_frames: str
    griffin_lim_iters: int
    phase_init: str
    palette: str
    max_silence_s: float
    silence_db: float
    section_s: float
    cue_from: str
    seed_dynamics_db: float
    seed_min_length: float
    seed_songs: str
    seed_max_fd: float
    threads: int
    level_glide: float
    match_dynamics: float
    match_tonal: float
    min_dynamics_db: float
    min_tonal: float
    min_copy: float

    @classmethod
    def from_params(cls, params: dict) -> "GenerateConfig":
        p = config.section(params, "generate", cls)
        seconds = p("seconds", (int, float), above=0)
        cfg = cls(model=p("model", str), seconds=float(seconds), n_songs=p("n_songs", int, minimum=1),
                  seed_source=p("seed_source", str, SEED_SOURCES), seed_file=p("seed_file", str),
                  seed_blocks=p("seed_blocks", int, minimum=1),
                  temperature=float(p("temperature", (int, float), minimum=0)),
                  random_seed=p("random_seed", int), crossfade=p("crossfade", int, minimum=0),
                  format=p("format", str, FORMATS), top_k=p("top_k", int, minimum=0),
                  top_p=float(p("top_p", (int, float), above=0, minimum=0)),
                  code_frames=p("code_frames", str, CODE_FRAMES),
                  griffin_lim_iters=p("griffin_lim_iters", int, minimum=0),
                  phase_init=p("phase_init", str, layouts.PHASE_INITS),
                  palette=p("palette", str, PALETTES),
                  max_silence_s=float(p("max_silence_s", (int, float), minimum=0)),
                  silence_db=float(p("silence_db", (int, float), above=0)),
                  section_s=float(p("section_s", (int, float), minimum=0)),
                  cue_from=p("cue_from", str, CUE_FROM),
                  seed_dynamics_db=float(p("seed_dynamics_db", (int, float), minimum=0)),
                  seed_min_length=float(p("seed_min_length", (int, float), minimum=0)),
                  seed_songs=p("seed_songs", str, SEED_SONGS),
                  seed_max_fd=float(p("seed_max_fd", (int, float), minimum=0)),
                  threads=p("threads", int, minimum=0),
                  level_glide=float(p("level_glide", (int, float), minimum=0)),
                  match_dynamics=float(p("match_dynamics", (int, float), minimum=0)),
                  match_tonal=float(p("match_tonal", (int, float), minimum=0)),
                  min_dynamics_db=float(p("min_dynamics_db", (int, float), minimum=0)),
                  min_tonal=float(p("min_tonal", (int, float), minimum=0)),
                  min_copy=float(p("min_copy", (int, float), minimum=0)))
        if cfg.top_p > 1:
            raise UserError(f"params.yaml 'generate.top_p' must be at most 1, got {cfg.top_p!r}.")
        if cfg.seed_source == "file" and not cfg.seed_file:
            raise UserError("params.yaml 'generate.seed_source' is 'file' but "
                            "'generate.seed_file' is empty; name an audio file.")
        return cfg


# --- the model, one step at a time -------------------------------------------------------------

class Stepper:
    """The trained network as a one-step model: (block or code, states) -> (prediction, states),
    and the closed loop that samples each next input from the prediction. The family is read off
    the layers: an Embedding `encode` takes codes (codebook); a `decode` with twice the inputs'
    width predicts a Laplace distribution; else the prediction is the next block (regression)."""

    def __init__(self, model):
        import tensorflow as tf
        unwrap = lambda layer: getattr(layer, "layer", layer)  # noqa: E731 (TimeDistributed)
        self.encode = unwrap(model.get_layer("encode"))
        self.decode = unwrap(model.get_layer("decode"))
        self.rnns = [layer for layer in model.layers if hasattr(layer, "cell")]
        if not self.rnns:
            raise UserError("The model has no recurrent layer; it was not made by `train`.")
        if hasattr(self.encode, "input_dim"):                        # Embedding
            self.family, self.n_features = "codebook", self.decode.units
        else:
            n_in = int(self.encode.kernel.shape[0])
            self.family = "laplace" if self.decode.units == 2 * n_in else "regression"
            self.n_features = n_in
        # the loops below are tf.while_loop / tf.cond / tf.foldl already: no AutoGraph rewrite
        # of their Python (it cost ~1 s of every generate run, 3x the network's own time on
        # the tests' tiny songs)
        self.step = tf.function(self._step, reduce_retracing=True, autograph=False)
        self.loop = tf.function(self._loop, reduce_retracing=True, autograph=False)
        self.warm = tf.function(self._warm, reduce_retracing=True, autograph=False)

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

    def _sample(self, out, seed, how, barred, prev=None):
        """The next input from a prediction: the block plus N(0, temperature) noise (regression),
        a Laplace draw with its scale times the temperature (laplace), or a code drawn from the
        softmax at that temperature, kept to the top_k codes and the top_p mass (codebook), never
        one outside the song's palette or `barred` (-1e9 added to its logit), and (`prev`, the
        code before) each code's logit less the level glide times the dB its level differs from
        `prev`'s; temperature 0 takes the mean or the likeliest code."""
        import tensorflow as tf
        temperature, top_k, top_p, bias = how[:4]
        if self.family == "regression":
            return out + temperature * tf.random.stateless_normal(tf.shape(out), seed=seed)
        if self.family == "laplace":
            mu, log_b = tf.split(out, 2, axis=-1)
            log_b = tf.clip_by_value(log_b, -netlib.LOG_SCALE_BOUND, netlib.LOG_SCALE_BOUND)
            u = tf.random.stateless_uniform(tf.shape(mu), seed=seed, minval=-0.4999, maxval=0.4999)
            return mu - temperature * tf.exp(log_b) * tf.sign(u) * tf.math.log1p(-2 * tf.abs(u))
        def keep_top_k(logits):
            kth = tf.math.top_k(logits, tf.minimum(top_k, tf.shape(logits)[-1])).values[:, -1:]
            return tf.where(logits < kth, -1e9, logits)

        def keep_top_p(logits):
            ranked = tf.sort(logits, direction="DESCENDING")
            before = tf.cumsum(tf.nn.softmax(ranked), axis=-1, exclusive=True)
            floor = tf.reduce_min(tf.where(before < top_p, ranked, 1e9), axis=-1, keepdims=True)
            return tf.where(logits < floor, -1e9, logits)

        # each filter only when asked for: top-p's sort would be the dearest op of every step
        out = out + bias + barred             # codes outside a song's palette, barred: -1e9
        levels, glide = how[6:8]
        if prev is not None:                  # a level jump of d dB from the last code: -glide*d
            out = out - glide * tf.abs(levels[None, :] - tf.gather(levels, prev)[:, None])
        logits = out / tf.maximum(temperature, 1e-6)
        logits = tf.cond(top_k > 0, lambda: keep_top_k(logits), lambda: logits)
        logits = tf.cond(top_p < 1.0, lambda: keep_top_p(logits), lambda: logits)
        drawn = tf.random.stateless_categorical(logits, 1, seed=seed, dtype=tf.int32)[:, 0]
        return tf.where(temperature > 0, drawn, tf.argmax(out, axis=-1, output_type=tf.int32))

    def _loop(self, out, states, n_blocks, how, noise_seed, prev):
        """`n_blocks` closed-loop steps in one graph: sample the next input from the last
        prediction, keep it, predict from it. Returns (batch, n_blocks[, features])."""
        import tensorflow as tf
        made = tf.TensorArray(tf.int32 if self.family == "codebook" else tf.float32,
                              size=n_blocks)
        silent, max_silent = how[4:6]         # (batch, codes) bool; silent steps allowed in a row

        def body(t, out, states, made, run, left, prev):
            barred = tf.where(silent & (left > 0)[:, None], -1e9, 0.0)
            block = self._sample(out, tf.stack([noise_seed, t]), how, barred,
                                 prev if self.family == "codebook" else None)
            made = made.write(t, block)
            if self.family == "codebook":     # each song's run of silence, then as long barred
                run = tf.where(tf.gather(silent, block, batch_dims=1), run + 1, 0)
                left = tf.where(run >= max_silent, max_silent, tf.maximum(left - 1, 0))
                run = tf.where(run >= max_silent, 0, run)
            out, states = self._step(block, states)
            if self.family == "codebook":
                prev = block
            return t + 1, out, states, made, run, left, prev

        zeros = tf.zeros(tf.shape(out)[:1], tf.int32)
        _, out, states, made, _, _, _ = tf.while_loop(lambda t, *_: t < n_blocks, body,
                                                      (tf.constant(0), out, states, made, zeros,
                                                       zeros, prev))
        stacked = made.stack()
        return tf.transpose(stacked, [1, 0] + list(range(2, len(stacked.shape)))), out, states

    def _warm(self, blocks, states):
        """Teacher-forced steps over (batch, n[, features]) in one graph: the prediction after
        the last input, and the states."""
        import tensorflow as tf
        steps = tf.transpose(blocks, [1, 0] + list(range(2, len(blocks.shape))))
        out, states = self._step(steps[0], states)
        return tf.foldl(lambda acc, block: self._step(block, acc[1]), steps[1:],
                        initializer=(out, states))

    def run(self, blocks: np.ndarray, states=None):
        """Teacher-forced steps over (batch, n[, features]): the outputs after each input."""
        import tensorflow as tf
        states = states or self.initial_states(blocks.shape[0])
        outs = []
        for t in range(blocks.shape[1]):
            y, states = self.step(tf.constant(blocks[:, t]), states)
            outs.append(y.numpy())
        return np.stack(outs, axis=1), states


def generate_blocks(stepper: Stepper, seed: np.ndarray, n_blocks: int, temperature: float,
                    rng: np.random.Generator, top_k: int = 0, top_p: float = 1.0,
                    palettes: np.ndarray | None = None, silent: np.ndarray | None = None,
                    max_silent: int = 0, cues: np.ndarray | None = None,
                    section_steps: int = 0, levels: np.ndarray | None = None,
                    glide: float = 0.0) -> np.ndarray:
    """Warm the state up on the seed (batch, k[, features]), then sample each next block or code
    from the prediction and feed it back for `n_blocks` steps (the draws follow from `rng`'s
    seed, so a run is reproducible). Returns (batch, n_blocks[, features]): normalised blocks or
    frames, or codes. `palettes` (batch, codes) of bool keeps each song of a codebook model to
    the codes marked for it; after `max_silent` codes in a row marked for it in `silent`
    (batch or 1, codes), a song draws none of those for as many steps (0: no limit). With
    `cues` (batch, sections, k'[, features]) and `section_steps` > 0, every `section_steps`
    steps a new section starts: the state goes on through the next cue (teacher-forced, not
    played), so the song moves to another part of the music it grows from. With `levels`
    (codes,) in dB, each draw of a code loses `glide` nats per dB its level jumps from the code
    before (the seed's last, or a cue's last at a section's start). Each section's closed loop
    runs as one TensorFlow graph: no Python work per step."""
    import tensorflow as tf
    out, states = stepper.warm(tf.constant(seed), stepper.initial_states(len(seed)))
    bias = (np.zeros((len(seed), 1), np.float32) if palettes is None
            else np.where(palettes, 0.0, -1e9).astype(np.float32))
    if silent is None or max_silent <= 0:
        silent = np.zeros((1, stepper.n_features if stepper.family == "codebook" else 1), bool)
    silent = np.broadcast_to(np.asarray(silent, bool).reshape(-1, silent.shape[-1]),
                             (len(seed), silent.shape[-1]))
    codebook = stepper.family == "codebook"
    if levels is None or not codebook:
        levels = np.zeros(stepper.n_features if codebook else 1, np.float32)
    how = (tf.constant(float(temperature)), tf.constant(int(top_k)), tf.constant(float(top_p)),
           tf.constant(bias), tf.constant(silent),
           tf.constant(int(max_silent) if max_silent > 0 else 2 ** 30),
           tf.constant(np.asarray(levels, np.float32)), tf.constant(float(glide)))
    prev = (np.asarray(seed[:, -1], np.int32) if codebook else np.zeros(len(seed), np.int32))
    parts, done, section = [], 0, 0
    while done < n_blocks:
        if section and cues is not None and section <= cues.shape[1]:
            out, states = stepper.warm(tf.constant(cues[:, section - 1]), states)
            if codebook:
                prev = np.asarray(cues[:, section - 1, -1], np.int32)
        n = n_blocks - done if section_steps <= 0 else min(section_steps, n_blocks - done)
        made, out, states = stepper.loop(out, states, tf.constant(n), how,
                                         tf.constant(int(rng.integers(2 ** 31 - 1)), tf.int32),
                                         tf.constant(prev))
        parts.append(made.numpy())
        if codebook:
            prev = parts[-1][:, -1].astype(np.int32)
        done, section = done + n, section + 1
    return np.concatenate(parts, axis=1)


def silent_codes(book, plays: np.ndarray, n_fft: int, below_db: float) -> np.ndarray:
    """(songs, n_codes) bool: for each song, the codes whose frame is at least `below_db` under
    the median frame of the music it grows from (`plays`: (songs, n_codes) how often each code
    plays there) — a fade's tail, a hum, silence — or under -60 dBFS."""
    level = layouts.frame_dbfs(book.centroids, n_fft)
    order = np.argsort(level)
    cum = np.cumsum(plays[:, order], axis=1)
    middle = np.array([np.searchsorted(c, c[-1] / 2) for c in cum])
    median = level[order][np.minimum(middle, len(level) - 1)]
    return (level < median[:, None] - below_db) | (level < layouts.SILENT_DBFS)


# --- from blocks to audio ----------------------------------------------------------------------

def peak_safe(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Clip to [-1, 1]; return the samples and the fraction that had to be clipped."""
    over = np.abs(samples) > 1.0
    return np.clip(samples, -1.0, 1.0).astype(np.float32), float(over.mean()) if len(samples) else 0.0


MAX_STRETCH = 3.0     # generate.match_dynamics spreads a song's frame levels at most this much


def breathe(samples: np.ndarray, target_db: float, db: np.ndarray | None = None
            ) -> tuple[np.ndarray, float]:
    """`samples` whose frame levels (evaluate's frames) spread at least `target_db` (p90 - p10):
    each frame's level is moved away from the song's median level, k times as far as it was
    (k <= MAX_STRETCH), by a gain gliding from frame centre to frame centre, like an expander.
    No frame is raised past full scale (a limiter, so the song keeps its level; scaling the
    whole song down instead cost up to 4 dB of level and moved its frames away from the real
    songs'). Returns the samples and k (1.0: unchanged, the song already breathes that much).
    `db`: its frames' levels (`quality.frame_dbfs`), where the caller has them."""
    f, hop = quality.FRAME, quality.HOP
    db = quality.frame_dbfs(samples) if db is None else db
    have = quality.spread_db(db)
    if have >= target_db or len(db) < 2:
        return samples, 1.0
    centres = np.arange(len(db)) * hop + f / 2
    t = np.arange(len(samples))
    away = np.clip(db - np.median(db), -40.0, None)     # silence gets no quieter than this
    # the most a frame may rise: its own peak to full scale. Between two frame centres the gain
    # is between theirs, and both frames hold those samples, so none passes full scale.
    room = np.maximum(-20 * np.log10(np.abs(quality.frames(samples)).max(axis=1) + 1e-9), 0.0)
    out, k, aim = samples, 1.0, target_db + 0.1      # aimed a little over
    was_k, was = 1.0, have
    for _ in range(8):    # the frames overlap, and the limiter holds the loud ones: k grows
        # the first step as if the spread grew with k, then secant steps on what it did
        step = k * aim / max(have, 0.1) if k == 1.0 else k + (aim - have) * (k - was_k) / max(
            have - was, 1e-3)
        was_k, was, k = k, have, float(np.clip(step, k, MAX_STRETCH))
        gain_db = np.minimum((k - 1) * away, room[:len(away)])
        out = samples * 10 ** (np.interp(t, centres, gain_db) / 20)
        have = quality.spread_db(quality.frame_dbfs(out))
        if have >= target_db or k >= MAX_STRETCH:
            break
    return out.astype(np.float32), float(k)


MAX_SHARPEN = 1.0     # generate.match_tonal at most doubles a bin's distance from its neighbours
NEIGHBOURHOOD_HZ = 200.0     # a bin is sharpened against the mean of this much spectrum around it


def sharpen(samples: np.ndarray, rate: int, target: float, frame: int = 2048, hop: int = 512,
            have: float | None = None) -> tuple[np.ndarray, float]:
    """`samples` at least `target` tonal (evaluate's tonal fraction): in each frame, every bin's
    log-magnitude moves a times further from the mean of its +-100 Hz neighbourhood (a <=
    MAX_SHARPEN), so the peaks the song plays (notes, harmonics) stand further out of what lies
    between them; the phases, each frame's loudness (so the song's dynamics: one loudness for
    the whole song had let a quiet lone note rise over a loud chord) and the notes stay.
    Returns the samples and a (0.0: unchanged, the song is already that tonal, or silent).
    `have`: its tonal fraction, where the caller has it."""
    have = quality.tonal_fraction(samples, rate) if have is None else have
    if have >= target or have <= 0:
        return samples, 0.0
    z = layouts.stft(samples, frame, hop, workers=1)     # the songs are on one thread each
    mag = np.abs(z).T                                    # (bins, frames)
    log_mag = np.log(mag + 1e-7)
    width = max(3, int(NEIGHBOURHOOD_HZ / (rate / frame)) | 1)
    contrast = log_mag - ndimage.uniform_filter1d(log_mag, width, axis=0, mode="nearest")
    phase = z.T / np.maximum(mag, 1e-12)
    level = quality.level_dbfs(samples)
    energy = (mag ** 2).sum(axis=0)

    def made(a: float) -> np.ndarray:
        sharp = np.exp(log_mag + a * contrast)
        sharp *= np.sqrt(energy / np.maximum((sharp ** 2).sum(axis=0), 1e-20))  # each frame's own
        y = layouts.istft((sharp * phase).T, frame, hop, len(samples), workers=1)
        return y * 10 ** ((level - quality.level_dbfs(y)) / 20)

    tried, got = 0.0, have
    # first guess: on real songs a = 0.25 made them about 1.5x as tonal; then secant steps, the
    # tonal fraction rising about linearly with a
    a = float(np.clip(0.45 * (target / have - 1), 0.05, MAX_SHARPEN))
    for _ in range(4):
        out = made(a)
        now = quality.tonal_fraction(out, rate)
        if now >= target or a >= MAX_SHARPEN:
            break
        slope = (now - got) / (a - tried)
        tried, got = a, now
        a = MAX_SHARPEN if slope <= 0 else min(MAX_SHARPEN, a + 1.05 * (target - now) / slope)
    peak, ceiling = np.abs(out).max(), max(1.0, float(np.abs(samples).max()))
    if peak > ceiling:
        out = out * (ceiling / peak)
    return out.astype(np.float32), float(a)


UNKNOWN_SOURCE = dict(grows_from_tonal_median=0.0, grows_from_dynamics_db_median=0.0)


def floor_asked(floor: float, matched: float, unit: str) -> str:
    """The log's clause when a `min_*` floor, not the source, set a song's target."""
    return f", at least {floor:g}{unit} asked" if floor > matched else ""


def match_song(x: np.ndarray, body: dict, name: str, number: int, cfg: "GenerateConfig",
               rate: int) -> tuple[np.ndarray, dict]:
    """One new song made at least `cfg.match_tonal` times as tonal as the median window of the
    song it grows from (`body`, `SourceBodies`; `sharpen`), then spread to breathe at least
    `cfg.match_dynamics` times as much (`breathe`) and, when sharpened, at least as much as it
    was drawn (on one corpus sharpening alone had taken 1.1 dB off the median song's
    dynamics). Every song is also made at least `cfg.min_tonal` tonal and to breathe at least
    `cfg.min_dynamics_db`, whatever its source. Returns the song and what was done."""
    db = quality.frame_dbfs(x)
    drawn = quality.spread_db(db)
    summary, a = dict(dynamics_drawn_db=round(drawn, 2)), 0.0
    if cfg.match_tonal > 0 or cfg.min_tonal > 0:
        tonal = quality.tonal_fraction(x, rate, frame_db=db)
        x, a = sharpen(x, rate, max(cfg.match_tonal * body["grows_from_tonal_median"],
                                    cfg.min_tonal), have=tonal)
        if a > 0:
            log.info("song_%02d is %.3f tonal, %s %.3f (x%g)%s: its peaks sharpened %.2f",
                     number, tonal, name, body["grows_from_tonal_median"], cfg.match_tonal,
                     floor_asked(cfg.min_tonal, cfg.match_tonal * body["grows_from_tonal_median"],
                                 ""), a)
            db = quality.frame_dbfs(x)
        summary.update(tonal_drawn=round(tonal, 4), sharpened=round(a, 3))
    source = body["grows_from_dynamics_db_median"]
    x, k = breathe(x, max(drawn if a > 0 else 0.0, cfg.match_dynamics * source,
                          cfg.min_dynamics_db), db)
    if k > 1:
        log.info("song_%02d breathes %.1f dB%s, %s %.1f dB (x%g)%s: its levels spread %.2fx",
                 number, quality.spread_db(db), f" ({drawn:.1f} dB before sharpening)"
                 if abs(drawn - quality.spread_db(db)) >= 0.05 else "", name, source,
                 cfg.match_dynamics, floor_asked(cfg.min_dynamics_db, cfg.match_dynamics * source,
                                                 " dB"), k)
    summary.update(dynamics_stretch=round(k, 3))
    return x, summary


def like_sources(songs: np.ndarray, seeds: list[dict], bodies: "SourceBodies | None",
                 cfg: "GenerateConfig", rate: int, scale: float = 32768.0,
                 numbers: list[int] | None = None) -> list[dict]:
    """Each song of `songs` (changed in place) as tonal and as lively as the song it grows from
    (`match_song`), and at least as tonal and as lively as the floors `cfg.min_tonal` and
    `cfg.min_dynamics_db`; one summary per song of what was done ({} where nothing is asked
    for, or its source is not known and no floor is set). The songs are taken side by side,
    one thread per core (the FFTs and most numpy work run outside Python's lock). `numbers`:
    the songs' numbers in the log (default 1, 2, ...)."""
    if not (cfg.match_tonal > 0 or cfg.match_dynamics > 0 or cfg.min_dynamics_db > 0
            or cfg.min_tonal > 0):
        return [{} for _ in seeds]        # no source read, no thread started
    seed_file = cfg.seed_file if cfg.seed_source == "file" else ""
    sources = []
    for seed in seeds:              # read here, in order: each source once, logged once
        if bodies is not None and "seed_song" in seed:
            sources.append((bodies.body(seed["seed_song"]), bodies.name(seed["seed_song"])))
        elif bodies is not None and seed_file:
            sources.append((bodies.of_file(seed_file, scale), Path(seed_file).name))
        else:
            sources.append((None, None))

    def one(i: int) -> dict:
        body, name = sources[i]
        if body is None:        # a source not known: only the floors hold
            if not (cfg.min_tonal > 0 or cfg.min_dynamics_db > 0):
                return {}
            body, name = UNKNOWN_SOURCE, "its source (not known)"
        songs[i], summary = match_song(songs[i], body, name,
                                       i + 1 if numbers is None else numbers[i], cfg, rate)
        return summary

    workers = min(len(seeds), config.usable_cores())
    if workers <= 1:
        return [one(i) for i in range(len(seeds))]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(len(seeds))))


# --- what the model reads and writes -------------------------------------------------------------

@dataclass(frozen=True)
class Reading:
    """How the model sees the data: normalised blocks or frames, or codes of a codebook."""
    norm: Normaliser
    book: object = None                  # a codebook.Codebook for codebook models

    def inputs(self, features: np.ndarray) -> np.ndarray:
        """Blocks or frames in the data's units -> what the model reads."""
        return self.book.assign(features) if self.book is not None else self.norm.forward(features)

    def features(self, made: np.ndarray, code_frames: str,
                 rng: np.random.Generator) -> np.ndarray:
        """What the model made -> blocks or frames in the data's units (`code_frames`: how a
        code is played)."""
        if self.book is not None:
            return self.book.decode(made, code_frames, rng)
        return self.norm.inverse(made)


# --- seeds ---------------------------------------------------------------------------------------

def spread_picks(song_of_seq: list[str], n_songs: int, rng: np.random.Generator,
                 loudness: np.ndarray | None = None, dynamics: np.ndarray | None = None,
                 min_dynamics_db: float = 0.0, short: set[str] | None = None,
                 judge: Callable[[str], str] | None = None) -> list[int]:
    """n_songs sequence numbers, each from another song while there are songs left (then round
    again): new songs seeded from one song tend to sound alike. Songs are drawn in proportion to
    their length: a 6 s jingle is rarely the whole palette of a new 30 s song. With each
    sequence's `loudness`, a song's seed is one of its louder half: a song's silent intro or
    tail warms the model up into silence. With each sequence's `dynamics` (dB), a song whose
    sequences breathe less than `min_dynamics_db` in the median (a drone, a pad) comes only after
    every song that breathes more: a new song grown from a drone is a drone. The songs in `short`
    (too short to grow a new song from without replaying them) come after every other song; a
    song both still and short, last. With a `judge` (song id -> the check its body fails, "" if
    none), the songs it fails come after every song it passes, each looked at only when the
    draw reaches it."""
    by_song: dict[str, list[int]] = {}
    for seq, song in enumerate(song_of_seq):
        by_song.setdefault(song, []).append(seq)
    names = sorted(by_song)
    songs = [by_song[s] for s in names]
    tier = np.zeros(len(songs), int)
    if dynamics is not None and min_dynamics_db > 0:
        still = np.array([np.median(dynamics[seqs]) < min_dynamics_db for seqs in songs])
        tier += still
        then = ("; every song is as still, so all are drawn alike" if still.all() else
                f" and seed new songs only after the other {len(songs) - still.sum()}")
        log.info("generate.seed_dynamics_db: %d of %d songs breathe less than %g dB (the median "
                 "of their sequences)%s", still.sum(), len(songs), min_dynamics_db,
                 then if still.any() else "")
    if short:
        tier += np.array([name in short for name in names])
    groups = [np.flatnonzero(tier == t) for t in np.unique(tier)]
    if loudness is not None:
        songs = [louder_half(seqs, loudness) for seqs in songs]
    sizes = np.array([len(s) for s in songs], float)
    order = np.concatenate([g[rng.choice(len(g), size=len(g), replace=False,
                                         p=sizes[g] / sizes[g].sum())] for g in groups])
    if judge is not None:
        order = passing_first(order, [names[i] for i in order], judge, min(n_songs, len(songs)))
    return [int(rng.choice(songs[order[i % len(songs)]])) for i in range(n_songs)]


def passing_first(order: np.ndarray, names: list[str], judge: Callable[[str], str],
                  needed: int) -> np.ndarray:
    """`order` with the songs `judge` fails moved after those it passes (each keeping its
    place among its kind), judging songs in order only until `needed` of them pass."""
    passing: list[int] = []
    failing: list[int] = []
    for k, (i, name) in enumerate(zip(order, names)):
        (failing if judge(name) else passing).append(int(i))
        if len(passing) == needed:
            return np.array(passing + failing + [int(j) for j in order[k + 1:]])
    return np.array(passing + failing)


class Album:
    """The album's real songs as `evaluate` measures a new song against them (the first
    `reference_seconds` of each), read when first needed. How far a song's frames lie from the
    validation songs (frame Fréchet distance) against how far the real songs lie (`evaluate`'s
    calibration, its median): a song farther than `max_vs_real` x that median is unlike the rest
    of the album (a jingle, a song in another style, whose new songs are as far). And a new
    song's copy score (`evaluate.Copies`)."""

    def __init__(self, npy: Path, rate: int, train_ids: list[str], val_ids: list[str],
                 reference_seconds: float, max_vs_real: float):
        self.npy, self.rate, self.max_vs_real = npy, rate, max_vs_real
        self.train_ids, self.val_ids, self.seconds = train_ids, val_ids, reference_seconds

    def read(self, ids: list[str]) -> tuple[list[str], list[np.ndarray]]:
        there = [i for i in ids if (self.npy / f"{i}.npy").is_file()]
        songs = evaluate.read_songs(self.npy, there, self.seconds, self.rate)
        return there, [quality.log_mel(x, self.rate) for x in songs]

    @functools.cached_property
    def mels(self) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        """(the validation songs there, their log-mel frames, the training songs' frames)."""
        return (*self.read(self.val_ids), self.read(self.train_ids)[1])

    @functools.cached_property
    def median_fd(self) -> float:
        val_ids, val_mel, train_mel = self.mels
        median = float("nan")
        if val_mel:
            frames = np.concatenate(val_mel)
            real = evaluate.real_distances(val_mel, train_mel, lambda m, against=None: (
                quality.frechet(m, frames if against is None else np.concatenate(against))))
            median = float(np.nanmedian(real)) if real else median
        if not np.isfinite(median):
            log.info("generate.seed_max_fd: no validation songs to measure the songs against, "
                     "so none is judged unlike the others")
        return median

    @functools.cached_property
    def copies(self) -> evaluate.Copies:
        return evaluate.Copies(self.mels[1], self.mels[2])

    def copy_score(self, x: np.ndarray) -> float:
        """A new song's copy score, as `evaluate` will report it (nan: none to compute)."""
        return self.copies.score(quality.log_mel(x, self.rate))

    def unlike(self, song: str, x: np.ndarray) -> str:
        """Why the song (its samples x) is unlike the album's songs, "" when it is not."""
        if self.max_vs_real <= 0 or not self.median_fd > 0:         # False for nan
            return ""
        val_ids, val_mel, _ = self.mels
        median = self.median_fd
        others = [m for i, m in zip(val_ids, val_mel) if i != song] or val_mel
        fd = quality.frechet(quality.log_mel(x, self.rate), np.concatenate(others))
        if not fd > self.max_vs_real * median:          # nan (a song under 2 frames): alike
            return ""
        return (f"unlike the others (frame Fréchet distance {fd:.1f} to the validation songs, "
                f"{fd / median:.1f}x the real songs' median {median:.1f} > {self.max_vs_real:g}x)")


class SourceBodies:
    """The songs new songs grow from, as `evaluate` judges a source: each song's windows as long
    as a new song (`evaluate.source_body`), its audio in `npy` read once, when first asked
    about (None when it is not there); with an `album`, how far each song lies from the others
    (`Album`)."""

    def __init__(self, npy: Path, rate: int, seconds: float, th: "evaluate.Thresholds",
                 names: dict[str, str] | None = None, album: Album | None = None):
        self.npy, self.rate, self.seconds, self.th = npy, rate, seconds, th
        self.names, self.album = names or {}, album
        self.known: dict[str, dict | None] = {}
        self.verdicts: dict[str, str] = {}

    def name(self, song: str) -> str:
        return self.names.get(song, song)

    def source_name(self, where: dict) -> str:
        """The file a new song grew from (`choose_seeds`' record of it), or its seed."""
        return self.name(where["seed_song"]) if "seed_song" in where else where["seed"]

    def body(self, song: str) -> dict | None:
        if song not in self.known:
            path = self.npy / f"{song}.npy"
            self.known[song] = (None if not path.is_file() else
                                self.of_samples(evaluate.load_song(path)))
        return self.known[song]

    def of_samples(self, x: np.ndarray) -> dict:
        return evaluate.source_body(x, self.rate, self.seconds, self.th)

    def of_file(self, path: str, scale: float) -> dict:
        """The body of the user's own seed file, decoded as training songs are."""
        key = f"file:{path}"
        if key not in self.known:
            self.known[key] = self.of_samples(audio.decode_samples(path, self.rate, scale))
        return self.known[key]

    def judge(self, song: str) -> str:
        """The check ("static ...", "smear ...") that the song's median window fails on
        `evaluate`'s bars, or why it is unlike the album's other songs (`Album`), "" when it
        passes (or its audio is not there): a new song grown from anywhere in a song that is
        static through most of its length is static, and one grown from a jingle in another
        style is as far from the album. A failing song is logged once, by its file name."""
        if song not in self.verdicts:
            body = self.body(song)
            fails = "" if body is None else evaluate.typical_window_fails(body, self.th)
            if body is not None and not fails and self.album is not None:
                fails = self.album.unlike(song, evaluate.load_song(self.npy / f"{song}.npy"))
            self.verdicts[song] = fails
            if self.verdicts[song]:
                log.info("generate.seed_songs: %s is %s; new songs grow from it only after every "
                         "song that passes", self.name(song), self.verdicts[song])
        return self.verdicts[song]


def louder_half(seqs: list[int], level: np.ndarray) -> list[int]:
    """The sequences among `seqs` (of one song) at least as loud as their median."""
    middle = np.median(level[seqs])
    return [q for q in seqs if level[q] >= middle]


def seed_from_tensors(tensors, split: str, k: int, n_songs: int, rng: np.random.Generator,
                      reading: Reading, song_of_seq: list[str] | None = None,
                      min_dynamics_db: float = 0.0, short: set[str] | None = None,
                      judge: Callable[[str], str] | None = None) -> tuple[np.ndarray, list[int]]:
    """The first k blocks (or codes) of n_songs sequences drawn at random, from as many different
    songs as there are (`song_of_seq`: each sequence's song), songs that breathe less than
    `min_dynamics_db` (codebook models) or are in `short` last, and those `judge` fails (see
    `spread_picks`), as the model reads them;
    `tensors` is the data the model trained on (a `Tensors`, or a codebook's `Codes`)."""
    x = tensors.read(f"{split}x")
    if x.shape[0] == 0:
        split_name = "validation" if split else "training"
        raise UserError(f"'{tensors.folder}' holds no {split_name} sequences to seed from; use "
                        "'generate.seed_source: train' or add songs.")
    if k > x.shape[1]:
        raise UserError(f"params.yaml 'generate.seed_blocks' is {k} but training sequences have "
                        f"{x.shape[1]} blocks; use at most {x.shape[1]}.")
    if song_of_seq is not None and len(song_of_seq) == x.shape[0]:
        picks = spread_picks(song_of_seq, n_songs, rng, loudness(x[:, :k], reading),
                             dynamics(x, reading) if min_dynamics_db > 0 else None,
                             min_dynamics_db, short, judge)
    else:
        picks = rng.choice(x.shape[0], size=n_songs, replace=x.shape[0] < n_songs).tolist()
    return as_read(np.asarray(x[picks, :k]), reading), picks


def code_levels(reading: Reading) -> np.ndarray:
    """(codes,) the level of each code's centre frame in dBFS."""
    bins = reading.book.centroids.shape[1]
    return layouts.frame_dbfs(reading.book.centroids, 2 * (bins - 1))


def loudness(codes, reading: Reading) -> np.ndarray | None:
    """(sequences,) the median level of each sequence of codes' frames, in dBFS (only their order
    matters); None for models that read no codes."""
    if reading.book is None:
        return None
    return np.median(code_levels(reading)[np.asarray(codes)], axis=1)


def dynamics(codes, reading: Reading) -> np.ndarray | None:
    """(sequences,) how much each sequence of codes breathes: p90 - p10 of its frames' levels in
    dB, as `evaluate` measures a song's dynamics; None for models that read no codes."""
    if reading.book is None:
        return None
    db = code_levels(reading)[np.asarray(codes)]
    return np.percentile(db, 90, axis=1) - np.percentile(db, 10, axis=1)


def as_read(stored: np.ndarray, reading: Reading) -> np.ndarray:
    """Sequences as the tensors (or a codebook's codes) store them -> what the model reads."""
    return stored.astype(np.int32) if stored.ndim == 2 else reading.norm.forward(stored)


def section_cues(x, song_of_seq: list[str] | None, picks: list[int], k: int, n_cues: int,
                 rng: np.random.Generator, reading: Reading, louder: bool = False) -> np.ndarray:
    """(len(picks), n_cues, k[, features]): for each picked sequence, `n_cues` stretches of k
    steps from sequences of its song (all sequences where the songs are not known), at random
    places, as the model reads them: what each new section of a song starts from. With `louder`,
    for a codebook model, only from the louder half of the song's sequences, as seeds are (a
    section that starts in a fade or a pause stays quiet, but the song breathes less: on real
    music 3.0 dB less than its source, against 1.1 dB with cues from the whole song)."""
    n, length = x.shape[0], x.shape[1]
    by_song: dict[str, list[int]] = {}
    for seq, song in enumerate(song_of_seq or [""] * n):
        by_song.setdefault(song, []).append(seq)
    level = loudness(x, reading) if louder else None
    if level is not None:
        by_song = {song: louder_half(seqs, level) for song, seqs in by_song.items()}
    cues = []
    for pick in picks:
        pool = by_song[song_of_seq[pick] if song_of_seq else ""]
        seqs = rng.choice(pool, size=n_cues, replace=len(pool) < n_cues)
        starts = rng.integers(0, length - k + 1, size=n_cues)
        cues.append(np.stack([np.asarray(x[q, a:a + k]) for q, a in zip(seqs, starts)]))
    return as_read(np.stack(cues).reshape(len(picks) * n_cues, k, *x.shape[2:]),
                   reading).reshape(len(picks), n_cues, k, *x.shape[2:])


def index_rows(index_path: Path, split: str) -> list[dict] | None:
    """The tensors' index rows of a split ("" train, "val_") in sequence order: each sequence's
    song id and first block in its song; None without an index."""
    if not index_path.is_file():
        return None
    rows = files.read_parquet(index_path, ["split", "seq", "song_id", "start_block"]).to_pylist()
    wanted = "val" if split else "train"
    return sorted((r for r in rows if r["split"] == wanted), key=lambda r: r["seq"])


def short_songs(rows: list[dict] | None, seq_len: int, audio_cfg: AudioConfig,
                min_seconds: float) -> set[str]:
    """The songs of the index `rows` shorter than `min_seconds` (a song's length: its last
    sequence's start plus a sequence, which ends at the song's end)."""
    if not rows or min_seconds <= 0:
        return set()
    end: dict[str, int] = {}
    for r in rows:
        end[r["song_id"]] = max(end.get(r["song_id"], 0), r["start_block"] + seq_len)
    step_s = audio_cfg.hop / audio_cfg.sample_rate
    short = {song for song, n in end.items() if n * step_s < min_seconds}
    if len(short) == len(end):
        log.info("generate.seed_min_length: every song is shorter than %g s, so all are drawn "
                 "alike", min_seconds)
    elif short:
        log.info("generate.seed_min_length: %d of %d songs are shorter than %g s and seed new "
                 "songs only after every longer one", len(short), len(end), min_seconds)
    return short


def file_inputs(path: str, k: int, audio_cfg: AudioConfig, reading: Reading) -> np.ndarray:
    """Every block of the user's own audio file (at least k), decoded exactly as training songs
    are, as the model reads them."""
    if not Path(path).is_file():
        raise UserError(f"Seed file '{path}' (generate.seed_file) not found.")
    try:
        samples = audio.decode_samples(path, audio_cfg.sample_rate, audio_cfg.scale)
    except audio.AudioError as err:
        raise UserError(f"Seed file '{path}' {err}.") from err
    blocks = layouts.analyse(samples, audio_cfg.layout, audio_cfg.block_size, audio_cfg.hop)
    if len(blocks) < k:
        raise UserError(f"Seed file '{path}' has {len(blocks)} block(s) of {audio_cfg.block_size} "
                        f"samples; 'generate.seed_blocks' asks for {k}.")
    return reading.inputs(blocks)


def seed_from_file(path: str, k: int, n_songs: int, audio_cfg: AudioConfig,
                   reading: Reading) -> np.ndarray:
    """The first k blocks of the user's own audio file, n_songs times."""
    return np.repeat(file_inputs(path, k, audio_cfg, reading)[None, :k], n_songs, axis=0)


def code_counts(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """(n_codes,) how often each code occurs in `codes`."""
    return np.bincount(np.asarray(codes, np.int64).ravel(), minlength=n_codes)


def song_plays(tensors, split: str, song_of_seq: list[str], picks: list[int]) -> np.ndarray:
    """(len(picks), n_codes): how often each code plays in every sequence (inputs and targets)
    of each picked sequence's song."""
    x, y = tensors.read(f"{split}x"), tensors.read(f"{split}y")
    rows = {}
    for seq, song in enumerate(song_of_seq):
        rows.setdefault(song, []).append(seq)
    return np.stack([code_counts(np.asarray(x[rows[song_of_seq[p]]]), tensors.n_codes)
                     + code_counts(np.asarray(y[rows[song_of_seq[p]]]), tensors.n_codes)
                     for p in picks])


def choose_seeds(cfg: GenerateConfig, tensors, audio_cfg: AudioConfig, reading: Reading,
                 rng: np.random.Generator, index_path: Path, n_cues: int = 0,
                 judge: Callable[[str], str] | None = None
                 ) -> tuple[np.ndarray, list[dict], np.ndarray | None, np.ndarray | None]:
    """The seeds as the model reads them (n_songs, seed_blocks[, features]), where each came
    from ({"seed": "train sequence 12", "seed_song": its song id where known}), for a codebook model how often each code plays in each seed's whole song (n_songs,
    n_codes; None where the songs are not known), and `n_cues` cues per song for its later
    sections, from the same song or file (None when none are asked for). `judge`: see
    `spread_picks`."""
    book, k = reading.book, cfg.seed_blocks
    if cfg.seed_source == "file":
        inputs = file_inputs(cfg.seed_file, k, audio_cfg, reading)
        seed = np.repeat(inputs[None, :k], cfg.n_songs, axis=0)
        plays = (None if book is None else
                 np.repeat(code_counts(inputs, len(book.centroids))[None], cfg.n_songs, 0))
        cues = None
        if n_cues:
            starts = rng.integers(0, len(inputs) - k + 1, size=(cfg.n_songs, n_cues))
            cues = np.stack([[inputs[a:a + k] for a in row] for row in starts])
        return seed, [dict(seed=cfg.seed_file)] * cfg.n_songs, plays, cues
    split = "" if cfg.seed_source == "train" else "val_"
    rows = index_rows(index_path, split)
    songs = None if rows is None else [r["song_id"] for r in rows]
    short = short_songs(rows, tensors.read(f"{split}x").shape[1], audio_cfg,
                        cfg.seed_min_length * cfg.seconds)
    seed, picks = seed_from_tensors(tensors, split, k, cfg.n_songs, rng, reading, songs,
                                    cfg.seed_dynamics_db, short, judge)
    known = songs is not None and len(songs) == tensors.n_sequences(split)
    plays = song_plays(tensors, split, songs, picks) if book is not None and known else None
    cues = (section_cues(tensors.read(f"{split}x"), songs if known else None, picks, k, n_cues,
                         rng, reading, cfg.cue_from == "louder_half") if n_cues else None)
    where = [dict(seed=f"{cfg.seed_source} sequence {i}", **({"seed_song": songs[i]} if known
                                                             else {})) for i in picks]
    return seed, where, plays, cues


@dataclass
class Grown:
    """What new songs grow from, one row per song: the seed as the model reads it, where it
    came from, the codes each may draw (None: any), the codes that count as silence for it
    (one row for every song, or None) and its later sections' cues (or None)."""
    seed: np.ndarray
    where: list[dict]
    palettes: np.ndarray | None
    silent: np.ndarray | None
    cues: np.ndarray | None

    def rows(self, pick: slice) -> "Grown":
        def cut(a: np.ndarray | None, shared: bool = False) -> np.ndarray | None:
            return a if a is None or shared and len(a) == 1 else a[pick]
        return Grown(self.seed[pick], self.where[pick], cut(self.palettes),
                     cut(self.silent, shared=True), cut(self.cues))


def seeds_for(cfg: GenerateConfig, n_rows: int, src: "Source", audio_cfg: AudioConfig,
              rng: np.random.Generator, index_path: Path, n_cues: int,
              bodies: "SourceBodies") -> Grown:
    """`n_rows` songs' seeds (`choose_seeds`), palettes (`generate.palette`) and silent codes."""
    seed, where, plays, cues = choose_seeds(
        dataclasses.replace(cfg, n_songs=n_rows), src.arrays, audio_cfg, src.reading, rng,
        index_path, n_cues, bodies.judge if cfg.seed_songs == "passing" else None)
    palettes = plays > 0 if plays is not None and cfg.palette == "song" else None
    silent = None
    if src.reading.book is not None:        # the training songs' codes where no song is known
        if plays is None or cfg.palette == "all":
            plays = code_counts(src.arrays.read("x"), src.arrays.n_codes)[None]
        silent = silent_codes(src.reading.book, plays, audio_cfg.block_size, cfg.silence_db)
    return Grown(seed, where, palettes, silent, cues)


@dataclass
class Grower:
    """Everything that turns seeds into finished songs, for one run."""
    src: "Source"
    cfg: GenerateConfig
    audio_cfg: AudioConfig
    n_steps: int
    section_steps: int
    bodies: "SourceBodies"
    rng: np.random.Generator

    def grow(self, rows: Grown, keep: list[int] | None = None, numbers: list[int] | None = None
             ) -> tuple[np.ndarray, np.ndarray, list[dict], float]:
        """Every row's song drawn in one batch (the batch as large as the first, so the graph
        is not traced again), then the songs `keep` (default all) turned into audio and matched
        to their sources, logged as songs `numbers` (default 1, 2, ...). Returns what the model
        made, the audio (n_kept, n_samples), what matching did, and the network's seconds."""
        cfg, src, t0 = self.cfg, self.src, time.perf_counter()
        made = generate_blocks(src.stepper, rows.seed, self.n_steps, cfg.temperature, self.rng,
                               cfg.top_k, cfg.top_p, rows.palettes, rows.silent,
                               steps_in(cfg.max_silence_s, self.audio_cfg), rows.cues,
                               self.section_steps, levels=None if src.reading.book is None else
                               code_levels(src.reading), glide=cfg.level_glide)
        network_s = time.perf_counter() - t0
        keep = list(range(len(made))) if keep is None else keep
        made = made[keep]
        samples = to_samples(made, src, cfg, self.rng)
        matched = like_sources(samples, [rows.where[i] for i in keep], self.bodies, cfg,
                               self.audio_cfg.sample_rate, self.audio_cfg.scale,
                               numbers=numbers)
        return made, samples, matched, network_s


def fewer_copies(songs: np.ndarray, made: np.ndarray, where: list[dict], matched: list[dict],
                 spare: Grown, grower: Grower) -> list[dict]:
    """`generate.min_copy`: each new song whose copy score (`evaluate`'s) is under it is drawn
    once more, from its spare seed (another song of the same draw), and the less copied of the
    two is kept: a song grown from a song that repeats itself tends to replay it. Changes the
    songs, what was made, where they grew from and what matching did in place; returns each
    song's copy figures."""
    cfg, album = grower.cfg, grower.bodies.album
    if cfg.min_copy <= 0 or album is None:
        return [{} for _ in where]
    scores = [album.copy_score(x) for x in songs]
    copies = [dict(copy_score_drawn=round(c, 4)) if np.isfinite(c) else {} for c in scores]
    low = [i for i, c in enumerate(scores) if c < cfg.min_copy]         # nan: never low
    name = grower.bodies.source_name
    pairs = spares_for(low, where, spare, grower)
    for i in low:
        if i not in pairs:
            log.info("generate.min_copy: song_%02d copy score %.2f (grown from %s) < %g, and no "
                     "other passing song is left to draw it again from", i + 1, scores[i],
                     name(where[i]), cfg.min_copy)
    if not pairs:
        return copies
    made2, songs2, matched2, _ = grower.grow(spare, keep=list(pairs.values()),
                                             numbers=[i + 1 for i in pairs])
    for k, (i, j) in enumerate(pairs.items()):
        again = album.copy_score(songs2[k])
        better = again > scores[i]
        log.info("generate.min_copy: song_%02d copy score %.2f (grown from %s) < %g: drawn again "
                 "from %s, %.2f; the %s kept", i + 1, scores[i], name(where[i]), cfg.min_copy,
                 name(spare.where[j]), again, "new draw" if better else "first draw")
        copies[i].update(copy_score_first=round(scores[i], 4), drawn_again=bool(better))
        if better:
            songs[i], made[i], where[i], matched[i] = songs2[k], made2[k], spare.where[j], \
                matched2[k]
            copies[i]["copy_score_drawn"] = round(again, 4)
    return copies


def spares_for(low: list[int], where: list[dict], spare: Grown, grower: Grower) -> dict[int, int]:
    """For each song of `low`, a spare row to draw it again from, in the draw's order: one
    grown from another song than it was, and (with `seed_songs: passing`) from a song that
    passes the judge, each row used once."""
    judge = (grower.bodies.judge if grower.cfg.seed_songs == "passing"
             else lambda song: "")
    free = [j for j, w in enumerate(spare.where)
            if "seed_song" not in w or not judge(w["seed_song"])]
    pairs = {}
    for i in low:
        j = next((j for j in free if spare.where[j].get("seed_song", "?") !=
                  where[i].get("seed_song")), None)
        if j is not None:
            pairs[i] = j
            free.remove(j)
    return pairs


# --- the stage ---------------------------------------------------------------------------------

def segment_levels(samples: np.ndarray, sample_rate: int, seconds: float = 10.0) -> list[float]:
    """RMS level in dBFS of each `seconds`-long segment: does the song fade or blow up later?"""
    n = max(1, int(seconds * sample_rate))
    return [round(float(10 * np.log10(np.mean(samples[i:i + n] ** 2) + 1e-12)), 2)
            for i in range(0, len(samples), n)]


def train_run_id(path: Path) -> str | None:
    return (files.read_json(path) or {}).get("mlflow_run_id")


@dataclass(frozen=True)
class Source:
    """The model as a one-step loop, and the data as it reads it."""
    stepper: Stepper
    arrays: object              # what it trained on: the `Tensors`, or a codebook's `Codes`
    reading: Reading
    audio: AudioConfig          # the data's settings (with the codebook for codebook models)


def model_for(source: str, data: AudioConfig, tensors: Tensors, codes_dir: Path,
              params: dict) -> Source:
    """The model and the data it reads, refused (one sentence) when it was made for other audio
    than the data: other settings or codebook, or, for a model that records none, another
    feature count."""
    from stages.codebook import Codes
    model, model_audio = netlib.load(source, config.TrackingConfig.from_params(params))
    stepper = Stepper(model)
    norm = Normaliser.for_params(tensors, params)
    arrays, reading = tensors, Reading(norm)
    if stepper.family == "codebook":
        arrays = Codes(codes_dir).check()
        data = data.with_codebook(arrays.digest)
        reading = Reading(norm, arrays.load())
    if model_audio is not None:
        config.check_same_audio(model_audio, data, source, str(arrays.folder))
    else:
        log.warning("the model '%s' records no audio settings (saved by an older version); only "
                    "its feature count is checked against the data.", source)
    n_feat = arrays.shape()[1]
    if stepper.n_features != n_feat:
        raise UserError(f"The model '{source}' predicts {stepper.n_features} features but the "
                        f"tensors have {n_feat}; run `dvc repro train` first.")
    return Source(stepper, arrays, reading, data)


def data_settings(tensors: Tensors, wanted: AudioConfig) -> AudioConfig:
    """The audio settings of the tensors, which must be params.yaml's (else they are stale)."""
    data = tensors.audio()
    diff = data.differences(wanted)
    if diff:
        raise UserError(f"The tensors in '{tensors.folder}' were made with other audio settings "
                        f"than params.yaml's (data vs params: {'; '.join(diff)}); run `dvc repro` "
                        "first.")
    return data


def to_samples(made: np.ndarray, src: Source, cfg: GenerateConfig,
               rng: np.random.Generator) -> np.ndarray:
    """What the model made -> (n_songs, n_samples) audio, every song at once, cut to length."""
    a = src.audio
    features = src.reading.features(made, cfg.code_frames, rng)
    samples = layouts.synthesise(features, a.layout, a.block_size, a.hop, cfg.crossfade,
                                 cfg.griffin_lim_iters, seed=int(rng.integers(2 ** 31)),
                                 init=cfg.phase_init)
    return samples[:, :int(round(cfg.seconds * a.sample_rate))]


def write_songs(songs_samples: np.ndarray, rate: int, cfg: GenerateConfig, out_dir: Path,
                seeds: list[dict]) -> list[dict]:
    """Each song peak-safe, written with a spectrogram beside it (the folder's earlier songs
    removed first); returns one summary per song."""
    from stages import plots
    out_dir.mkdir(parents=True, exist_ok=True)
    files.remove_stale_tmp(out_dir)
    for old in out_dir.glob("song_*"):
        old.unlink()
    songs = []
    for i in tqdm(range(len(songs_samples)), desc="generate: writing", unit="song", disable=None,
                  leave=False):   # WAV/MP3 + spectrogram; quiet when not a terminal
        samples, clipped = peak_safe(songs_samples[i])
        path = audio.write_song(out_dir / f"song_{i + 1:02d}.{cfg.format}", samples, rate,
                                cfg.format)
        plots.spectrogram(samples, rate, path.with_suffix(".png"),
                          title=f"{path.name}: seeded from {seeds[i]['seed']}")
        songs.append(dict(file=path.name, **seeds[i], seconds=round(len(samples) / rate, 3),
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
    metrics = {"generate_realtime_factor": summary["realtime_factor"],
               "generate_clipped_fraction": max(s["clipped_fraction"] for s in summary["songs"])}
    stretch = [s["dynamics_stretch"] for s in summary["songs"] if "dynamics_stretch" in s]
    if stretch:
        metrics["generate_dynamics_stretch_max"] = max(stretch)
    if all("replayed_longest_s" in s for s in summary["songs"]):
        metrics["generate_replayed_longest_s"] = max(s["replayed_longest_s"]
                                                     for s in summary["songs"])
    copies = [s["copy_score_drawn"] for s in summary["songs"] if "copy_score_drawn" in s]
    if copies:                                      # generate.min_copy
        metrics["generate_copy_score_min"] = min(copies)
        metrics["generate_drawn_again"] = sum(bool(s.get("drawn_again"))
                                              for s in summary["songs"])
    tracker.log_metrics(metrics)
    for s in summary["songs"]:
        tracker.log_artifact(out_dir / s["file"], "generated")
        tracker.log_artifact((out_dir / s["file"]).with_suffix(".png"), "generated")
    tracker.end()


def steps_for(seconds: float, audio_cfg: AudioConfig) -> int:
    """Blocks (or frames) that make `seconds` of audio."""
    n = seconds * audio_cfg.sample_rate
    return math.ceil(n / audio_cfg.hop) + (1 if audio_cfg.layout == "frames" else 0)


def steps_in(seconds: float, audio_cfg: AudioConfig) -> int:
    """Steps lasting about `seconds` (a section, a run of silence)."""
    return round(seconds * audio_cfg.sample_rate / audio_cfg.hop)


def sections_for(cfg: GenerateConfig, n_steps: int, audio_cfg: AudioConfig) -> tuple[int, int]:
    """(steps per section, cues a song needs: one per section after its first); (0, 0) for
    songs of one section."""
    section_steps = steps_in(cfg.section_s, audio_cfg)
    return (section_steps, -(-n_steps // section_steps) - 1) if section_steps > 0 else (0, 0)


REPLAY_MIN_S = 0.5          # a run of training codes this long counts as a passage played back


def song_streams(x: np.ndarray, index_path: Path) -> np.ndarray:
    """Training sequences of codes (n_seq, length) -> each training song's codes in order, one
    row per song, padded with -1 (a code no model makes): the tensors' index says where each
    sequence starts in its song (back to back, the last one aligned to the song's end). Without
    an index that matches, each sequence is its own row."""
    rows = index_rows(index_path, "")
    if rows is None or len(rows) != len(x):
        return np.asarray(x)
    length, songs = x.shape[1], {}
    for r in rows:
        songs.setdefault(r["song_id"], []).append((r["start_block"], r["seq"]))
    streams = []
    for parts in songs.values():
        end, pieces = 0, []
        for start, seq in sorted(parts):        # each sequence adds what is past the last one
            if start + length > end:
                pieces.append(np.asarray(x[seq, max(end - start, 0):]))
                end = start + length
        streams.append(np.concatenate(pieces))
    out = np.full((len(streams), max(map(len, streams))), -1, np.int64)
    for i, stream in enumerate(streams):
        out[i, :len(stream)] = stream
    return out


def replayed(made: np.ndarray, codes, audio_cfg: AudioConfig, index_path: Path) -> list[dict]:
    """Per new song of codes, how much of it plays training codes back in the same order: its
    longest exact run of a training song's codes, in seconds, and the share of it inside such
    runs of REPLAY_MIN_S or more. Logged per song."""
    from stages.codebook import replayed_runs
    played = song_streams(codes.read("x"), index_path)
    seconds_per_step = audio_cfg.hop / audio_cfg.sample_rate
    longest, share = replayed_runs(made, played, steps_in(REPLAY_MIN_S, audio_cfg))
    rows = []
    for i, (n, part) in enumerate(zip(longest, share)):
        rows.append(dict(replayed_longest_s=round(float(n * seconds_per_step), 2),
                         replayed_share=round(float(part), 3)))
        log.info("song_%02d: its longest exact run of training codes is %.2f s; %.0f%% of it is in "
                 "runs of %g s or more", i + 1, rows[-1]["replayed_longest_s"], 100 * part,
                 REPLAY_MIN_S)
    return rows


CODEBOOK_ONLY = dict(top_k=0, top_p=1.0, cue_from="song", seed_dynamics_db=0.0)


def ignored_settings(cfg: GenerateConfig, family: str) -> list[str]:
    """The codebook-only settings of `cfg` that ask for something a `family` model cannot do
    (each at a value other than its no-op one); none for codebook models."""
    if family == "codebook":
        return []
    return [f"generate.{key}" for key, no_op in CODEBOOK_ONLY.items()
            if getattr(cfg, key) != no_op]


def say_plan(cfg: GenerateConfig, family: str, n_steps: int, layout: str, threads: int,
             n_cues: int, palettes: np.ndarray | None) -> None:
    """Log what is about to be made, and name any setting this model ignores."""
    log.info("generating %d song(s) of %d %s (%.1f s) from %d seed step(s), %s model, "
             "temperature %g, %d thread(s) per op", cfg.n_songs, n_steps,
             "frames" if layout == "frames" else "blocks", cfg.seconds, cfg.seed_blocks,
             family, cfg.temperature, threads)
    ignored = ignored_settings(cfg, family)
    if ignored:
        log.warning("%s act%s on codebook models only; this %s model ignores %s.",
                    ", ".join(ignored), "" if len(ignored) > 1 else "s", family,
                    "them" if len(ignored) > 1 else "it")
    if n_cues:
        log.info("sections of %g s: %d per song, each from another stretch of the song it grows "
                 "from", cfg.section_s, n_cues + 1)
    if palettes is not None:
        log.info("each song keeps to its seed song's palette: %s of %d codes",
                 ", ".join(str(int(n)) for n in palettes.sum(axis=1)), palettes.shape[1])
    if cfg.level_glide and family == "codebook":
        log.info("level glide: %g nats off a code per dB it jumps from the code before (a 20 dB "
                 "jump %.0fx less likely)", cfg.level_glide, np.exp(20 * cfg.level_glide))


def main(args) -> None:
    params = config.load_params(args.params)
    cfg = GenerateConfig.from_params(params)
    wanted = AudioConfig.from_params(params)
    tensors = Tensors.from_params(args.data, params)
    tensors.check()
    audio_cfg = data_settings(tensors, wanted)
    model_source = args.model or cfg.model
    threads = netlib.set_threads(cfg.threads)  # before the model: TensorFlow's first op fixes them
    src = model_for(model_source, audio_cfg, tensors, Path(args.codebook), params)
    rng = np.random.default_rng(cfg.random_seed)
    n_steps = steps_for(cfg.seconds, audio_cfg)
    section_steps, n_cues = sections_for(cfg, n_steps, audio_cfg)
    bodies = source_bodies(cfg, params, args, audio_cfg, tensors)
    # with min_copy, a spare seed per song, from the next songs of the same draw
    rows = seeds_for(cfg, cfg.n_songs * (2 if cfg.min_copy > 0 else 1), src, audio_cfg, rng,
                     tensors.index_path, n_cues, bodies)
    drawn, spare = rows.rows(slice(0, cfg.n_songs)), rows.rows(slice(cfg.n_songs, None))
    say_plan(cfg, src.stepper.family, n_steps, audio_cfg.layout, threads, n_cues,
             drawn.palettes)
    grower = Grower(src, cfg, audio_cfg, n_steps, section_steps, bodies, rng)
    t0 = time.perf_counter()
    made, songs_samples, matched, network_s = grower.grow(drawn)
    wall = time.perf_counter() - t0
    copies = fewer_copies(songs_samples, made, drawn.where, matched, spare, grower)
    checked = time.perf_counter() - t0 - wall

    out_dir = Path(args.out)
    songs = write_songs(songs_samples, audio_cfg.sample_rate, cfg, out_dir, drawn.where)
    for song, done, copy in zip(songs, matched, copies):
        song.update(done, **copy)
    if src.reading.book is not None:
        for song, replay in zip(songs, replayed(made, src.arrays, audio_cfg,
                                                tensors.index_path)):
            song.update(replay)
    audio_seconds = songs_samples.size / audio_cfg.sample_rate
    summary = dict(songs=songs, n_songs=cfg.n_songs, seconds=cfg.seconds, blocks=n_steps,
                   family=src.stepper.family, generation_s=round(wall, 3),
                   network_s=round(network_s, 3), realtime_factor=round(audio_seconds / wall, 1),
                   copy_check_s=round(checked, 3), threads=threads,
                   palette_codes=(None if drawn.palettes is None
                                  else drawn.palettes.sum(axis=1).tolist()),
                   model=model_source, audio=src.audio.as_dict())
    files.write_json(args.metrics, summary)
    log.info("%d song(s) -> %s (%.1f s of audio in %.1f s, %.1f s of it the network: %.0fx real "
             "time%s)", cfg.n_songs, out_dir, audio_seconds, wall, network_s, audio_seconds / wall,
             f"; then {checked:.1f} s for generate.min_copy" if cfg.min_copy > 0 else "")
    log_to_run(params, summary, out_dir, Path(args.train_metrics))


def source_bodies(cfg: GenerateConfig, params: dict, args, audio_cfg: AudioConfig,
                  tensors: Tensors) -> SourceBodies:
    """The songs new songs may grow from, judged on their audio in `args.npy` and named by the
    manifest's file names (`generate.seed_songs`, `seed_max_fd`, `match_dynamics`)."""
    names = {song: Path(path).name for song, path in
             evaluate.song_names(Path(args.manifest)).items()}
    th = evaluate.Thresholds.from_params(params)
    album, unlike = None, cfg.seed_max_fd if cfg.seed_songs == "passing" else 0.0
    if unlike > 0 or cfg.min_copy > 0:
        train_ids, val_ids = evaluate.song_ids(tensors)
        album = Album(Path(args.npy), audio_cfg.sample_rate, train_ids, val_ids,
                      th.reference_seconds, unlike)
    return SourceBodies(Path(args.npy), audio_cfg.sample_rate, cfg.seconds, th, names, album)


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--data", default="data/processed",
                        help="the tensors stage's folder (default: %(default)s)")
    parser.add_argument("--model", default=None,
                        help="a .keras file or an MLflow model URI such as models:/rawtune@champion "
                             "(default: params.yaml generate.model)")
    parser.add_argument("--codebook", default="data/codebook",
                        help="the codebook stage's folder, for codebook models (default: "
                             "%(default)s)")
    parser.add_argument("--npy", default="data/interim/npy",
                        help="the songs' audio (wav_to_npy's folder), to judge the songs new songs "
                             "grow from (default: %(default)s)")
    parser.add_argument("--manifest", default="data/interim/manifest.parquet",
                        help="decode's table of the songs, for their file names (default: "
                             "%(default)s)")
    parser.add_argument("--out", default="data/generated", help="output folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/generate.json",
                        help="summary of the songs made (default: %(default)s)")
    parser.add_argument("--train-metrics", default="metrics/train.json",
                        help="train's metrics, naming the MLflow run to add to (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
