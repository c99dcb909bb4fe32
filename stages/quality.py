"""Objective figures of a piece of audio, for judging generated songs by numbers.

All work on mono float samples in [-1, 1] at one sample rate (the pipeline's, 44.1 kHz):

frames        2048-sample Hann frames, hop 1024 (46 ms / 23 ms at 44.1 kHz)
log-mel       64 triangular mel bands (HTK mel scale) from 30 Hz to 11 kHz over those frames,
              log10 of band power + 1e-10
texture       ~1 s windows (43 frames): mean, std and mean absolute frame-to-frame change of 16
              coarse bands (groups of 4 log-mel bands): 48 numbers per window
passage       ~0.5 s of music (22 frames) as it sounds in time: the 16 coarse bands of each of
              its frames, 352 numbers; a song has one starting at every frame
copy distance the mean, over a song's passages, of the distance to the nearest passage of the
              training songs, every one of them searched (a stretch replayed from a training
              song is near one wherever it starts; a new tune made of familiar sounds is not)
Fréchet       distance between Gaussians fitted to two sets of feature vectors (as FID does)
loop score    how exactly a song repeats itself: the smallest, over lags of 1 s up to a quarter of
              the song, mean distance between log-mel frames that far apart, divided by the mean
              distance between frames at random: ~0 for one stretch played over and over
"""
from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.ndimage import median_filter

from stages import layouts

FRAME, HOP = 2048, 1024
N_MELS, FMIN, FMAX = 64, 30.0, 11000.0
TEXTURE_FRAMES, COARSE = 43, 4
PASSAGE_FRAMES = 22
SLICE_FRAMES = 4096     # frames per slice of a whole song (~190 s: 64 MB of float64 frames)
SILENT_DBFS = layouts.SILENT_DBFS
EPS = 1e-10


def frames(x: np.ndarray, frame: int = FRAME, hop: int = HOP) -> np.ndarray:
    """(n_frames, frame) overlapping frames (a read-only view); short input is zero-padded."""
    x = np.asarray(x, np.float64)
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    return np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]


def n_frames(x: np.ndarray, frame: int = FRAME, hop: int = HOP) -> int:
    """How many frames `frames` cuts from x."""
    return 1 if len(x) < frame else (len(x) - frame) // hop + 1


def frame_slices(x: np.ndarray, size: int | None = None, frame: int = FRAME, hop: int = HOP):
    """Consecutive stretches of x whose `frames` are x's own, `size` (SLICE_FRAMES) frames at a
    time: a whole song's frame figures without all its frames in memory at once (an hour-long
    song's frames are 1.2 GB of float64; x may be a float32 memory map)."""
    n, size = n_frames(x, frame, hop), size or SLICE_FRAMES
    for a in range(0, n, size):
        yield x[a * hop:(min(n, a + size) - 1) * hop + frame]


def power_frames(x: np.ndarray, frame: int = FRAME, hop: int = HOP) -> np.ndarray:
    """(n_frames, frame // 2 + 1) power spectra of Hann-windowed frames."""
    hann = np.hanning(frame + 1)[:-1]        # periodic, as scipy.signal's "hann" (not imported:
    spec = np.fft.rfft(frames(x, frame, hop) * hann, axis=1)          # ~1 s of every evaluate)
    return (spec.real ** 2 + spec.imag ** 2) / frame


def frame_dbfs(x: np.ndarray, frame: int = FRAME, hop: int = HOP) -> np.ndarray:
    """RMS level of each frame in dBFS (a full-scale sine is -3 dBFS)."""
    return np.concatenate([10 * np.log10((frames(part, frame, hop) ** 2).mean(axis=1) + EPS)
                           for part in frame_slices(x, frame=frame, hop=hop)])


def mel_filterbank(rate: int, n_fft: int = FRAME, n_mels: int = N_MELS, fmin: float = FMIN,
                   fmax: float = FMAX) -> np.ndarray:
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)    # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(min(fmax, rate / 2)), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    bank = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, mid, hi = edges[i:i + 3]
        bank[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return bank


def log_mel(x: np.ndarray, rate: int) -> np.ndarray:
    """(n_frames, 64) log-mel frames."""
    return np.log10(power_frames(x) @ mel_filterbank(rate).T + EPS)


def coarse_bands(mel_frames: np.ndarray) -> np.ndarray:
    """(n_frames, 16) the log-mel frames in coarse bands (the mean of each 4 mel bands)."""
    return mel_frames.reshape(len(mel_frames), -1, COARSE).mean(axis=2)


def texture(mel_frames: np.ndarray, window: int = TEXTURE_FRAMES) -> np.ndarray:
    """(n_windows, 48) texture vectors of ~1 s windows of log-mel frames."""
    coarse = coarse_bands(mel_frames)
    out = []
    for start in range(0, len(coarse) - window + 1, window):
        w = coarse[start:start + window]
        out.append(np.concatenate([w.mean(0), w.std(0), np.abs(np.diff(w, axis=0)).mean(0)]))
    return np.array(out).reshape(-1, 3 * coarse.shape[1])


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of the rows of a and b."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu_a, mu_b = a.mean(0), b.mean(0)
    eye = np.eye(a.shape[1]) * 1e-6
    ca, cb = np.cov(a, rowvar=False) + eye, np.cov(b, rowvar=False) + eye
    root = linalg.sqrtm(ca @ cb)
    if np.iscomplexobj(root):
        root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * root))


def flatness(x: np.ndarray) -> float:
    """Mean spectral flatness of the audible frames: ~0 tonal, -> 1 white noise."""
    power = power_frames(x)[:, 1:] + EPS
    loud = frame_dbfs(x) > SILENT_DBFS
    if not loud.any():
        return 0.0
    p = power[loud[:len(power)]]
    return float(np.mean(np.exp(np.log(p).mean(axis=1)) / p.mean(axis=1)))


def dynamics_db(x: np.ndarray) -> float:
    """p90 - p10 of frame loudness in dB: music breathes (9-20 dB), a drone does not (~2 dB)."""
    return spread_db(frame_dbfs(x))


def spread_db(db: np.ndarray) -> float:
    """p90 - p10 of frame levels in dB (`dynamics_db` of the frames they came from)."""
    return float(np.percentile(db, 90) - np.percentile(db, 10))


def click_ratio(x: np.ndarray, rate: int, block_size: int, min_hz: float = 4000.0,
                frame: int = 512, hop: int = 128) -> float:
    """High-band spectral flux in frames that straddle a block boundary, divided by the flux
    elsewhere: ~1 when block joints are inaudible, >> 1 when every joint clicks."""
    power = power_frames(x, frame, hop)
    high = np.fft.rfftfreq(frame, 1 / rate) >= min_hz
    mag = np.sqrt(power[:, high])
    flux = np.maximum(mag[1:] - mag[:-1], 0).sum(axis=1)
    starts = hop * np.arange(1, len(power))
    offset = (starts + frame // 2) % block_size            # frame centre relative to a joint
    near = np.minimum(offset, block_size - offset) < frame // 2
    if not near.any() or near.all() or flux[~near].mean() <= 0:
        return 1.0
    return float(flux[near].mean() / flux[~near].mean())


def tonal_fraction(x: np.ndarray, rate: int, seconds: float = 0.25, lo: float = 60.0,
                   hi: float = 5000.0, db_above: float = 6.0, neighbourhood_hz: float = 200.0,
                   frame_db: np.ndarray | None = None) -> float:
    """Share of 60 Hz-5 kHz bins standing >= 6 dB above the median of their +-100 Hz
    neighbourhood, in spectra averaged over ~0.25 s: notes and harmonics (real music 0.1-0.28)
    against a smear or noise (~0). `frame_db`: `frame_dbfs(x)`, when the caller has it."""
    return mean_of_loud(tonal_chunks(x, rate, seconds, lo, hi, db_above, neighbourhood_hz,
                                     frame_db))


def mean_of_loud(fractions: np.ndarray) -> float:
    """The mean of `tonal_chunks` over the chunks that are not all silence (0 if none is)."""
    return float(np.nanmean(fractions)) if np.isfinite(fractions).any() else 0.0


def chunk_frames(rate: int, seconds: float = 0.25) -> int:
    """Frames (HOP apart) in one chunk of `tonal_chunks`."""
    return max(1, int(round(seconds * rate / HOP)))


def tonal_chunks(x: np.ndarray, rate: int, seconds: float = 0.25, lo: float = 60.0,
                 hi: float = 5000.0, db_above: float = 6.0, neighbourhood_hz: float = 200.0,
                 frame_db: np.ndarray | None = None) -> np.ndarray:
    """`tonal_fraction` of each ~0.25 s chunk in turn (nan where a chunk is all silence);
    `frame_db`: `frame_dbfs(x)`, when the caller has it already. A whole song is taken a slice
    of whole chunks at a time."""
    per = chunk_frames(rate, seconds)
    freqs = np.fft.rfftfreq(FRAME, 1 / rate)
    band = (freqs >= lo) & (freqs <= hi)
    width = max(3, int(neighbourhood_hz / (rate / FRAME)) | 1)
    n = n_frames(x)
    loud = (frame_dbfs(x) if frame_db is None else frame_db)[:n] > SILENT_DBFS
    fractions = np.full(max(0, (n - per) // per + 1), np.nan)
    size = per * max(1, SLICE_FRAMES // per)
    for first, part in zip(range(0, n, size), frame_slices(x, size)):
        power = power_frames(part)
        for start in range(first, first + len(power) - per + 1, per):
            if not loud[start:start + per].any():
                continue
            db = 10 * np.log10(power[start - first:start - first + per].mean(axis=0) + EPS)
            local = median_filter(db, size=width, mode="nearest")
            fractions[start // per] = float(((db - local) >= db_above)[band].mean())
    return fractions


def window_figures(x: np.ndarray, rate: int, seconds: float, step_s: float) -> dict:
    """Dynamics and tonal fraction of each `seconds`-long window of a whole song, one window
    every `step_s` (one window when the song is shorter): how the body of a song, not only its
    start, would be judged, a slice of its frames at a time (x may be a float32 memory map).
    Returns {"dynamics_db": array, "tonal_fraction": array}."""
    db = frame_dbfs(x)
    chunks, per = tonal_chunks(x, rate, frame_db=db), chunk_frames(rate)
    width = max(1, int(seconds * rate / HOP))
    n_windows = int((len(x) / rate - seconds) // step_s) + 1
    starts = [int(round(k * step_s * rate / HOP)) for k in range(max(1, n_windows))]
    dynamics, tonal = [], []
    for a in starts:
        dynamics.append(spread_db(db[a:a + width]))
        tonal.append(mean_of_loud(chunks[a // per:(a + width) // per]))
    return dict(dynamics_db=np.array(dynamics), tonal_fraction=np.array(tonal))


def passages(mel_frames: np.ndarray, length: int = PASSAGE_FRAMES, step: int = 1) -> np.ndarray:
    """(n_passages, 16 * length) float32 passages of a song's log-mel frames, one starting at
    every `step`-th frame (a song shorter than one passage: none)."""
    coarse = coarse_bands(mel_frames).astype(np.float32)
    if len(coarse) < length:
        return np.zeros((0, coarse.shape[1] * length), np.float32)
    view = np.lib.stride_tricks.sliding_window_view(coarse, length, axis=0)[::step]
    return view.reshape(len(view), -1)


def nearest_distance(queries: np.ndarray, reference: np.ndarray, chunk: int = 2048) -> float:
    """Mean Euclidean distance from each query row to its nearest reference row, every
    reference row searched (a stretch of a training song is found wherever it starts), by
    matrix products on `chunk` x `chunk` blocks (16 MB at a time however many songs)."""
    if not len(queries) or not len(reference):
        return float("nan")
    q = np.asarray(queries, np.float32)
    qq = np.einsum("ij,ij->i", q, q)                     # once, not once per reference block
    best = np.full(len(q), np.inf, np.float32)
    for start in range(0, len(reference), chunk):
        r = np.asarray(reference[start:start + chunk], np.float32)
        rr = np.einsum("ij,ij->i", r, r)
        for at in range(0, len(q), chunk):
            d = qq[at:at + chunk, None] - 2 * (q[at:at + chunk] @ r.T) + rr[None]
            np.minimum(best[at:at + chunk], d.min(axis=1), out=best[at:at + chunk])
    return float(np.sqrt(np.maximum(best, 0)).mean())


def level_dbfs(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + EPS))


def song_figures(x: np.ndarray, rate: int, block_size: int) -> dict:
    """The per-song figures that need no reference audio."""
    db = frame_dbfs(x)
    return dict(rms_dbfs=round(level_dbfs(x), 2),
                silent_fraction=round(float((db < SILENT_DBFS).mean()), 4),
                flatness=round(flatness(x), 4),
                clipped_fraction=round(float((np.abs(x) >= 0.999).mean()), 6),
                dynamics_db=round(dynamics_db(x), 2),
                clicks=round(click_ratio(x, rate, block_size), 3),
                tonal_fraction=round(tonal_fraction(x, rate), 4))


def loop_score(mel_frames: np.ndarray, rate: int, min_lag_s: float = 1.0, seed: int = 0) -> float:
    """The loop score of a song's log-mel frames (module docstring); nan when the song is too
    short to repeat a 1 s stretch four times."""
    n = len(mel_frames)
    lo, hi = int(round(min_lag_s * rate / HOP)), n // 4
    if hi < lo or n < 8:
        return float("nan")
    rng = np.random.default_rng(seed)
    a, b = rng.integers(n, size=(2, 4 * n))
    spread = np.linalg.norm(mel_frames[a] - mel_frames[b], axis=1).mean()
    if spread <= 0:
        return 0.0
    lagged = [np.linalg.norm(mel_frames[lag:] - mel_frames[:-lag], axis=1).mean()
              for lag in range(lo, hi + 1)]
    return float(min(lagged) / spread)


def nearest_songs(mels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For each song (its log-mel frames), the frame Fréchet distance to the nearest other one
    and that song's index (inf and -1 for a song alone)."""
    n = len(mels)
    d = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = frechet(mels[i], mels[j])
    if n < 2:
        return np.full(n, np.inf), np.full(n, -1)
    return d.min(axis=1), d.argmin(axis=1)
