"""Every layout's forward (samples -> the features the model reads) and inverse (features ->
samples), for the stage that makes the features (`fft_blocks`) and the one that turns
predictions back into audio (`generate`).

Layouts (`fft_blocks.fft`), each block of `block_size` samples (the last one zero-padded):
  rfft  (default) real parts of all rfft bins, then imaginary parts of every bin except those that are
        always zero (DC, and Nyquist when block_size is even): n_features == block_size, lossless.
  full  the seed's layout: real then imaginary parts of np.fft.fft, n_features == 2 * block_size.
"""
from __future__ import annotations

import numpy as np


def n_features(block_size: int, layout: str) -> int:
    return block_size if layout == "rfft" else 2 * block_size


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
