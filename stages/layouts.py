"""Every layout's forward (samples -> the features the model reads) and inverse (features ->
samples), for the stage that makes the features (`fft_blocks`) and the one that turns
predictions back into audio (`generate`).

Layouts (`fft_blocks.fft`), each block of `block_size` samples (the last one zero-padded):
  rfft  (default) real parts of all rfft bins, then imaginary parts of every bin except those that are
        always zero (DC, and Nyquist when block_size is even): n_features == block_size, lossless.
  full  the seed's layout: real then imaginary parts of np.fft.fft, n_features == 2 * block_size.
  frames
        overlapping Hann-windowed frames of `block_size` samples every `hop` samples (centred: frame
        t covers samples t*hop - block_size/2 ...), each the natural log of its rfft magnitude plus
        LOG_FLOOR: n_features == block_size // 2 + 1. The phases are dropped; the inverse rebuilds
        them by Griffin-Lim with momentum (Perraudin et al. 2013), batched over songs.
"""
from __future__ import annotations

import functools

import numpy as np

from stages import config

SILENT_DBFS = -60.0        # a frame below this level is silence (evaluate's silent fraction too)
LOG_FLOOR = 1e-4          # magnitude added before the log: -80 dB below a unit bin, the frames' floor


def n_features(block_size: int, layout: str) -> int:
    return {"rfft": block_size, "full": 2 * block_size, "frames": block_size // 2 + 1}[layout]


def silence(layout: str) -> float:
    """The value of every feature of a silent block or frame."""
    return float(np.log(LOG_FLOOR)) if layout == "frames" else 0.0


# --- frames: log-magnitude STFT and Griffin-Lim ------------------------------------------------

def n_frames(n_samples: int, hop: int) -> int:
    """Frames of a song of `n_samples` (centred frames: one every hop, the last past the end)."""
    return n_samples // hop + 1


def window(n_fft: int) -> np.ndarray:
    """The periodic Hann window, as scipy.signal.get_window("hann") computes it, bit for bit;
    written out because importing scipy.signal costs every stage that frames audio ~1 s."""
    return (0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, n_fft + 1)[:-1])).astype(np.float32)


def frame_rows(samples: np.ndarray, first: int, n_fft: int, hop: int) -> np.ndarray:
    """(n, n_fft) frames first, first+1, ... of a song whose samples from
    first*hop - n_fft//2 on are `samples` (zeros past its ends must already be there)."""
    count = (len(samples) - n_fft) // hop + 1
    return np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop][:count]


def song_frames(read, n_samples: int, first: int, stop: int, n_fft: int, hop: int) -> np.ndarray:
    """Log-magnitude frames [first, stop) of a song, reading only the samples they cover through
    `read(start, stop)` (a memory map's slice), zero beyond the song's ends."""
    lo, hi = first * hop - n_fft // 2, (stop - 1) * hop - n_fft // 2 + n_fft
    samples = np.zeros(hi - lo, np.float32)
    a, b = max(lo, 0), min(hi, n_samples)
    if b > a:
        samples[a - lo:b - lo] = read(a, b)
    import scipy.fft            # here: the stages that only read frames skip its ~0.3 s import
    spec = scipy.fft.rfft(frame_rows(samples, first, n_fft, hop) * window(n_fft), axis=-1)
    return np.log(np.abs(spec) + LOG_FLOOR).astype(np.float32)


def stft(samples: np.ndarray, n_fft: int, hop: int, workers: int = -1) -> np.ndarray:
    """(..., n_samples) -> (..., n_frames, n_fft // 2 + 1) complex64, centred Hann frames
    (`workers`: threads of the FFT, -1 = every core)."""
    pad = [(0, 0)] * (samples.ndim - 1) + [(n_fft // 2, n_fft // 2 + hop)]
    padded = np.pad(samples.astype(np.float32, copy=False), pad)
    count = n_frames(samples.shape[-1], hop)
    rows = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::hop, :][..., :count, :]
    import scipy.fft
    return scipy.fft.rfft(rows * window(n_fft), axis=-1, workers=workers)


def istft(spec: np.ndarray, n_fft: int, hop: int, n_samples: int, workers: int = -1
          ) -> np.ndarray:
    """The inverse of `stft` for one song: (n_frames, bins) -> (n_samples,) float32, by windowed
    overlap-add (each sample divided by the sum of the squared windows over it), so that
    istft(stft(x)) is x to float precision. `hop` must divide `n_fft`."""
    import scipy.fft
    rows = scipy.fft.irfft(spec, n=n_fft, axis=-1, workers=workers).astype(np.float32)
    rows *= window(n_fft)
    n, parts = len(rows), n_fft // hop
    out = np.zeros((n + parts - 1) * hop, np.float32)
    for j in range(parts):          # the j-th hop of every frame, laid end to end
        out[j * hop:(j + n) * hop] += rows[:, j * hop:(j + 1) * hop].reshape(-1)
    start = n_fft // 2
    return out[start:start + n_samples] * overlap_gain(n_fft, hop, n)[start:start + n_samples]


@functools.lru_cache(maxsize=4)
def overlap_gain(n_fft: int, hop: int, n_frames: int) -> np.ndarray:
    """1 / the sum of the squared windows over each sample of n_frames overlapping frames (what
    `istft` multiplies by); cached, as one song is often turned back to audio several times."""
    w2 = np.square(window(n_fft))
    parts = n_fft // hop
    norm = np.zeros((n_frames + parts - 1) * hop, np.float32)
    for j in range(parts):
        norm[j * hop:(j + n_frames) * hop] += np.tile(w2[j * hop:(j + 1) * hop], n_frames)
    gain = 1.0 / np.maximum(norm, 1e-8)
    gain.setflags(write=False)
    return gain


PHASE_INITS = ("locked", "random")


def frame_dbfs(log_mag: np.ndarray, n_fft: int) -> np.ndarray:
    """(..., bins) log-magnitude Hann frames -> the level in dBFS of the audio each one covers
    (Parseval over the one-sided spectrum, undoing the Hann window's power of 3/8)."""
    power = np.square(np.maximum(np.exp(np.asarray(log_mag, np.float64)) - LOG_FLOOR, 0))
    power[..., 1:-1] *= 2
    return 10 * np.log10(power.sum(axis=-1) / (n_fft ** 2 * 0.375) + 1e-12)


def locked_phases(log_mag: np.ndarray, n_fft: int, hop: int, seed: int = 0,
                  start: np.ndarray | None = None) -> np.ndarray:
    """(songs, n_frames, bins) log-magnitudes -> phases of a phase-locked vocoder (Laroche and
    Dolson): each spectral peak's phase advances by hop samples of its frequency (the peak bin
    refined by a parabola through the log-magnitudes around it), and each bin takes the phase of
    the peak whose region it is in, plus pi per bin (Hann frames that are not zero-phase); a
    random phase per bin starts each song (drawn from `seed`, or the given `start` (songs,
    bins)). Griffin-Lim from these phases converges in a few iterations instead of many: on real
    music, the spectral error after 2 iterations is below that of 16 from random phases."""
    mag = np.asarray(log_mag, np.float32)
    n_songs, n, bins = mag.shape
    two_pi = np.float32(2 * np.pi)
    phase = np.empty(mag.shape, np.float32)
    previous = (random_phases(seed, (n_songs, bins)) if start is None
                else np.array(start, np.float32).reshape(n_songs, bins))
    # PHASE_CHUNK frames at a time: every temporary stays in cache (whole-song temporaries made
    # a 60 s song cost 2.7x a 30 s one)
    for first in range(0, n, PHASE_CHUNK):
        advance, owner, lock = _peak_regions(mag[:, first:first + PHASE_CHUNK], n_fft, hop)
        for j in range(len(advance)):
            peaks = (previous + advance[j]).ravel()
            previous = peaks[owner[j]] + lock[j]
            phase[:, first + j] = previous
            if (first + j) % 64 == 63:
                np.mod(previous, two_pi, out=previous)   # float32 keeps its precision
    return np.mod(phase, two_pi, out=phase)


PHASE_CHUNK = 128      # frames per step of locked_phases (4 songs: 2 MB per temporary)


def random_phases(seed: int, shape: tuple) -> np.ndarray:
    """Phases drawn uniformly in [0, 2 pi) from `seed`: one per song and bin to start the locked
    phases, or one per frame and bin to start Griffin-Lim from noise."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32) * np.float32(2 * np.pi)


def _peak_regions(mag: np.ndarray, n_fft: int, hop: int):
    """For (songs, frames, bins) log-magnitudes, frame-major (frames, songs, bins) arrays: the
    phase advance of each bin's peak over one hop, the peak that owns each bin (an index into
    one frame's songs x bins, raveled), and the pi per bin between a bin and its peak."""
    n_songs, _, bins = mag.shape
    k = np.arange(bins, dtype=np.int32)
    a, b, c = mag[..., :-2], mag[..., 1:-1], mag[..., 2:]
    peak = np.zeros(mag.shape, bool)
    peak[..., 1:-1] = (b > a) & (b >= c)
    offset = np.zeros(mag.shape, np.float32)        # the peak's bin, refined by a parabola
    offset[..., 1:-1] = np.clip(0.5 * (a - c) / np.minimum(a - 2 * b + c, np.float32(-1e-6)),
                                np.float32(-0.5), np.float32(0.5))
    left = np.maximum.accumulate(np.where(peak, k, np.int32(-bins)), axis=-1)
    right = np.minimum.accumulate(np.where(peak, k, np.int32(2 * bins))[..., ::-1],
                                  axis=-1)[..., ::-1]
    owner = np.where(k - left <= right - k, left, right)
    owner = np.where((owner < 0) | (owner >= bins), k, owner)                # a frame without peaks
    advance = (np.float32(2 * np.pi * hop / n_fft) * (k.astype(np.float32) + offset)
               ).swapaxes(0, 1)
    lock = (np.float32(np.pi) * ((k - owner) & 1).astype(np.float32)).swapaxes(0, 1)
    owner = (owner + np.int32(bins) * np.arange(n_songs, dtype=np.int32)[:, None, None]
             ).swapaxes(0, 1)
    return advance, owner, lock


def griffin_lim(log_mag: np.ndarray, n_fft: int, hop: int, iters: int, momentum: float = 0.99,
                seed: int = 0, init: str = "locked") -> np.ndarray:
    """(..., n_frames, bins) log-magnitude frames -> samples (..., (n_frames - 1) * hop) whose
    STFT magnitude is close to them: fast Griffin-Lim (momentum 0.99) from the phases of a
    phase-locked vocoder (`init: locked`) or random ones, on tf.signal (2-3x numpy's speed here).
    The songs are split into one group per core, each group on its own thread (numpy's and
    TensorFlow's ops free the GIL): 4 songs of 30 s on 2 cores took 0.43 s, phase-locked start
    included, against 0.75 s as one batch whose ops split each FFT between the cores. Run
    eagerly: each op is a whole group of FFTs, so tracing a graph (about 3 s per process) would
    cost more than it saves."""
    log_mag = np.asarray(log_mag, np.float32)
    shape = log_mag.shape
    log_mag = log_mag.reshape((-1,) + shape[-2:])
    start = random_phases(seed, (len(log_mag), shape[-1]) if init == "locked" else log_mag.shape)

    def songs(i: np.ndarray) -> np.ndarray:
        mag = np.maximum(np.exp(log_mag[i]) - LOG_FLOOR, 0)
        phase = (locked_phases(log_mag[i], n_fft, hop, start=start[i]) if init == "locked"
                 else start[i])
        return _griffin_lim(mag, phase, n_fft, hop, iters, momentum)

    groups = min(len(log_mag), config.usable_cores())
    if groups <= 1:
        return songs(np.arange(len(log_mag))).reshape(shape[:-2] + (-1,))
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(groups) as pool:
        out = list(pool.map(songs, np.array_split(np.arange(len(log_mag)), groups)))
    return np.concatenate(out).reshape(shape[:-2] + (-1,))


def _griffin_lim(mag: np.ndarray, phase: np.ndarray, n_fft: int, hop: int, iters: int,
                 momentum: float) -> np.ndarray:
    """Griffin-Lim with momentum over (songs, n_frames, bins) magnitudes from `phase`."""
    import tensorflow as tf
    n, n_samples = mag.shape[1], (mag.shape[1] - 1) * hop
    inverse_window = tf.signal.inverse_stft_window_fn(hop)

    def forward(samples):
        padded = tf.pad(samples, [[0, 0], [n_fft // 2, n_fft // 2 + hop]])   # centred frames
        return tf.signal.stft(padded, n_fft, hop, fft_length=n_fft)[:, :n]

    def inverse(spec):
        samples = tf.signal.inverse_stft(spec, n_fft, hop, fft_length=n_fft,
                                         window_fn=inverse_window)
        return samples[:, n_fft // 2:n_fft // 2 + n_samples]

    magc = tf.complex(tf.constant(mag), tf.zeros_like(mag))
    angles = tf.exp(tf.complex(tf.zeros_like(phase), tf.constant(phase)))
    rebuilt = tf.zeros_like(angles)
    beta = tf.complex(np.float32(momentum / (1 + momentum)), np.float32(0))
    for _ in range(iters):
        previous = rebuilt
        rebuilt = forward(inverse(magc * angles))
        angles = rebuilt - beta * previous
        angles = angles / tf.complex(tf.abs(angles) + 1e-16, tf.zeros_like(mag))
    return inverse(magc * angles).numpy()


# --- blocks: the seed's layouts -----------------------------------------------------------------

def to_blocks(samples: np.ndarray, block_size: int) -> np.ndarray:
    """(n_samples,) -> (n_blocks, block_size), the last block zero-padded."""
    n_blocks = -(-len(samples) // block_size)
    padded = np.zeros(n_blocks * block_size, dtype=np.float32)
    padded[: len(samples)] = samples
    return padded.reshape(n_blocks, block_size)


def pack(blocks: np.ndarray, layout: str) -> np.ndarray:
    """(n_blocks, block_size) time domain -> (n_blocks, n_features) float32 spectra."""
    block_size = blocks.shape[-1]
    if layout == "full":
        spectrum = np.fft.fft(blocks, axis=-1)
        return np.concatenate([spectrum.real, spectrum.imag], axis=-1).astype(np.float32, copy=False)
    spectrum = np.fft.rfft(blocks, axis=-1)                    # (n_blocks, block_size // 2 + 1)
    last_imag = spectrum.shape[-1] - (1 if block_size % 2 == 0 else 0)
    return np.concatenate([spectrum.real, spectrum.imag[..., 1:last_imag]],
                          axis=-1).astype(np.float32, copy=False)


def unpack(features: np.ndarray, layout: str, block_size: int) -> np.ndarray:
    """(..., n_features) spectra -> (..., block_size) time-domain blocks; the inverse of `pack`."""
    features = np.asarray(features, dtype=np.float32)
    if layout == "full":
        spectrum = features[..., :block_size] + 1j * features[..., block_size:]
        return np.fft.ifft(spectrum, axis=-1).real.astype(np.float32)
    n_bins = block_size // 2 + 1
    imag = np.zeros(features.shape[:-1] + (n_bins,), dtype=np.float32)
    last_imag = n_bins - (1 if block_size % 2 == 0 else 0)
    imag[..., 1:last_imag] = features[..., n_bins:]
    spectrum = features[..., :n_bins] + 1j * imag
    return np.fft.irfft(spectrum, n=block_size, axis=-1).astype(np.float32)


def blocks_to_samples(blocks: np.ndarray, layout: str, block_size: int, crossfade: int) -> np.ndarray:
    """(n_blocks, features) spectra -> samples. With `crossfade` > 0 each block edge is blended
    over that many samples (equal-power), which removes the click of a hard joint."""
    frames = unpack(blocks, layout, block_size)          # (n_blocks, block_size)
    if crossfade <= 0 or len(frames) == 1:
        return frames.reshape(-1)
    c = min(crossfade, block_size // 2)
    fade_in = np.sin(np.linspace(0, np.pi / 2, c, dtype=np.float32)) ** 2
    out = frames[0].copy()
    for frame in frames[1:]:
        out[-c:] = out[-c:] * (1 - fade_in) + frame[:c] * fade_in
        out = np.concatenate([out, frame[c:]])
    return out


# --- any layout ------------------------------------------------------------------------------

def analyse(samples: np.ndarray, layout: str, block_size: int, hop: int) -> np.ndarray:
    """A whole song's samples -> its (n, n_features) blocks or frames, as `fft_blocks` makes them."""
    if layout == "frames":
        return song_frames(lambda a, b: samples[a:b], len(samples), 0,
                           n_frames(len(samples), hop), block_size, hop)
    return pack(to_blocks(samples, block_size), layout)


def synthesise(features: np.ndarray, layout: str, block_size: int, hop: int, crossfade: int = 0,
               iters: int = 16, seed: int = 0, init: str = "locked") -> np.ndarray:
    """(songs, n, n_features) blocks or frames -> (songs, n_samples): the block layouts' exact
    inverse (with `crossfade`), or Griffin-Lim (`iters` iterations from `init` phases) for
    frames, all songs at once."""
    if layout == "frames":
        return griffin_lim(features, block_size, hop, iters, seed=seed, init=init)
    return np.stack([blocks_to_samples(f, layout, block_size, crossfade) for f in features])
