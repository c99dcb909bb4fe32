"""Stage `fft_blocks`: data/interim/npy/<id>.npy -> data/interim/fft/<id>.npy, float32
(n_blocks, n_features): the song cut into blocks of `block_size` samples (the last one zero-padded),
each block's FFT as real numbers.

Layouts (`fft_blocks.fft`):
  rfft  (default) real parts of all rfft bins, then imaginary parts of every bin except those that are
        always zero (DC, and Nyquist when block_size is even): n_features == block_size, lossless.
  full  the seed's layout: real then imaginary parts of np.fft.fft, n_features == 2 * block_size.
The inverse (features -> samples) is here too, for generation.

block_size 11025 is a quarter second at 44.1 kHz (40 blocks = the seed's 10 s clips); the seed's own
default was 2048.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stages import arrays, config, pool

CHUNK_BLOCKS = 256


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


def fft_song(src: str, dst: str, block_size: int, layout: str) -> int:
    """Pure per-song work: a song's samples -> its blocks' spectra, streamed in chunks of blocks."""
    (n_samples,) = arrays.shape_of(src)
    n_blocks = -(-n_samples // block_size)
    step = CHUNK_BLOCKS * block_size
    with arrays.NpyWriter(dst, (n_blocks, n_features(block_size, layout))) as out:
        for start in range(0, n_samples, step):
            chunk = to_blocks(arrays.read_rows(src, start, start + step), block_size)
            out.write(start // block_size, pack(chunk, layout))
    return n_blocks


def main(args) -> None:
    params = config.load_params(args.params)
    audio = config.AudioConfig.from_params(params)
    song_pool = pool.SongPool.from_params(params)
    # every audio setting: a song's samples change with the rate and scale, not its id; the
    # tensors stage reads them from here and writes them beside the tensors
    stamp = dict(audio=audio.as_dict(), code=pool.source_digest("stages.arrays", "stages.fft_blocks"))
    pool.sync_songs(Path(args.npy), ".npy", Path(args.out), stamp, fft_song,
                    (audio.block_size, audio.layout), song_pool, "fft_blocks")


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--npy", default="data/interim/npy", help="npy folder (default: %(default)s)")
    parser.add_argument("--out", default="data/interim/fft", help="FFT folder (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
