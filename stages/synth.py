"""Deterministic synthetic music for the demo and the tests: melody notes with harmonics and ADSR
envelopes, a bass line over a chord progression, and drums (kick, snare, hi-hat), in stereo.

    python -m stages.synth data/raw/demo          # the demo songs, in MP3, FLAC, OGG and WAV

Every song is a pure function of its seed, so the demo is the same on every machine.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from stages import audio, config, files

log = logging.getLogger("rawtune.synth")

SCALES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10]}
PROGRESSIONS = [[0, 4, 5, 3], [0, 5, 3, 4], [0, 3, 4, 4], [5, 3, 0, 4]]  # scale degrees of chords

# (container, subtype, sample rate): the demo exercises decoding and resampling of each format.
FORMATS = [("MP3", None, 44100, "mp3"), ("FLAC", "PCM_24", 48000, "flac"),
           ("OGG", "VORBIS", 48000, "ogg"), ("WAV", "PCM_24", 48000, "wav"),
           ("MP3", None, 48000, "mp3")]

KIT_SEED = 808


def midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def envelope(n: int, rate: int, attack: float, decay: float, sustain: float, release: float):
    """ADSR envelope of n samples (release inside the note, so notes never click)."""
    t = np.arange(n) / rate
    dur = n / rate
    env = np.where(t < attack, t / max(attack, 1e-4),
                   np.maximum(sustain, 1 - (1 - sustain) * (t - attack) / max(decay, 1e-4)))
    return (env * np.clip((dur - t) / max(release, 1e-4), 0, 1)).astype(np.float32)


def tone(freq: float, n: int, rate: int, harmonics: list[float]) -> np.ndarray:
    t = np.arange(n) / rate
    return sum(a * np.sin(2 * np.pi * freq * (k + 1) * t) for k, a in enumerate(harmonics)
               if freq * (k + 1) < rate / 2).astype(np.float32)


def drum_kit(rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The snare and hi-hat samples: one kit for every song, like an album made on one drum
    machine (noise drawn once from a fixed seed)."""
    rng = np.random.default_rng(KIT_SEED)
    kick_n, hat_n = int(0.25 * rate), int(0.05 * rate)
    snare = (rng.standard_normal(kick_n).astype(np.float32)
             * envelope(kick_n, rate, .001, .08, 0, .15) * .25)
    hat = (np.diff(rng.standard_normal(hat_n + 1)).astype(np.float32)   # high-passed noise
           * envelope(hat_n, rate, .001, .03, 0, .02) * .06)
    return snare, hat


def make_song(seed: int, seconds: float, rate: int = 44100, bpm: float | None = None) -> np.ndarray:
    """One song: (n_frames, 2) float32 stereo in [-1, 1], at `bpm` beats per minute (drawn from
    88-140 when not given), on the drum kit shared by all songs."""
    rng = np.random.default_rng(seed)
    n_total = int(seconds * rate)
    left = np.zeros(n_total, np.float32)
    right = np.zeros(n_total, np.float32)
    drawn_bpm = rng.uniform(88, 140)
    beat = 60.0 / (bpm or drawn_bpm)
    kick_n = int(0.25 * rate)
    snare, hat = drum_kit(rate)
    root = int(rng.integers(45, 57))
    scale = SCALES[rng.choice(list(SCALES))]
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    lead = rng.dirichlet(np.ones(6)) * np.array([1, .6, .4, .3, .2, .1])  # the song's timbre
    pan = rng.uniform(0.3, 0.7)

    def add(signal: np.ndarray, start: float, gain_l: float, gain_r: float) -> None:
        i = int(start * rate)
        if i >= n_total:
            return
        part = signal[: n_total - i]
        left[i:i + len(part)] += gain_l * part
        right[i:i + len(part)] += gain_r * part

    degree, t, bar = 0, 0.0, 0
    while t < seconds:
        chord = progression[bar % len(progression)]
        bass_note = root - 12 + scale[chord % 7]
        for b in range(4):  # bass: one note per beat, drums on the beat grid
            start = t + b * beat
            n = int(beat * rate * 0.9)
            add(tone(midi_hz(bass_note + (12 if b == 2 else 0)), n, rate, [1, .5, .25])
                * envelope(n, rate, .01, .1, .6, .05), start, .35, .35)
            if b in (0, 2):
                kt = np.arange(kick_n) / rate
                kick = np.sin(2 * np.pi * (50 * kt + 100 * (1 - np.exp(-kt * 30)) / 30))
                add((kick * np.exp(-kt * 18)).astype(np.float32), start, .5, .5)
            else:
                add(snare, start, .3, .3)
            for half in (0, 0.5):
                add(hat, start + half * beat, .4, .6)
        step = 0.0
        while step < 4:  # melody: a random walk on the scale, notes of 1/2, 1 or 2 beats
            length = float(rng.choice([0.5, 0.5, 1, 1, 2]))
            degree = int(np.clip(degree + rng.integers(-2, 3), -3, 9))
            note = root + 12 + 12 * (degree // 7) + scale[degree % 7]
            n = int(length * beat * rate)
            if rng.random() > 0.15:  # some rests
                add(tone(midi_hz(note), n, rate, list(lead)) * envelope(n, rate, .02, .2, .5, .08),
                    t + step * beat, .45 * (1 - pan), .45 * pan)
            step += length
        t += 4 * beat
        bar += 1
    song = np.stack([left, right], axis=1)
    return (song * (0.8 / max(float(np.abs(song).max()), 1e-9))).astype(np.float32)


def write_demo(folder: str | Path, n_songs: int, min_seconds: float, max_seconds: float,
               seed: int, bpm: float | None = None) -> list[Path]:
    """Write `n_songs` demo songs, cycling through the formats; existing files are left alone."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files.remove_stale_tmp(folder)
    rng = np.random.default_rng(seed)
    written = []
    for i in range(n_songs):
        container, subtype, rate, ext = FORMATS[i % len(FORMATS)]
        seconds = float(rng.uniform(min_seconds, max_seconds))
        path = folder / f"demo song {i + 1:02d}.{ext}"
        written.append(path)
        if path.exists():
            continue
        song = audio.resample(make_song(seed * 1000 + i, seconds, bpm=bpm), 44100, rate)
        audio.write(path, song, rate, container, subtype, ogg_serial=seed * 1000 + i)
        log.info("wrote %s (%.0f s, %s, %d Hz, stereo)", path, seconds, container, rate)
    return written


def main(args) -> None:
    params = config.load_params(args.params)
    n = config.param(params, "demo.songs", int, minimum=1)
    lo = config.param(params, "demo.min_seconds", (int, float), minimum=0.1)
    hi = config.param(params, "demo.max_seconds", (int, float), minimum=lo)
    bpm = config.param(params, "demo.bpm", (int, float), minimum=0)
    write_demo(args.folder, n, lo, hi, config.param(params, "demo.seed", int), bpm or None)


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("folder", nargs="?", default="data/raw/demo",
                        help="where to write the demo songs (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
