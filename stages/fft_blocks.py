"""Stage `fft_blocks`: data/interim/npy/<id>.npy -> data/interim/fft/<id>.npy, float32
(n_blocks, n_features): the song cut into blocks of `block_size` samples (the last one zero-padded),
each block's FFT as real numbers; or, with `fft: frames`, into overlapping frames of `block_size`
samples every `hop`, each its log-magnitude spectrum.

Layouts (`fft_blocks.fft`) and their inverses are in `stages/layouts.py`.

block_size 11025 is a quarter second at 44.1 kHz (40 blocks = the seed's 10 s clips); the seed's own
default was 2048.
"""
from __future__ import annotations

from pathlib import Path

from stages import arrays, config, pool
from stages.layouts import n_features, n_frames, pack, song_frames, to_blocks

CHUNK_BLOCKS = 256


def fft_song(src: str, dst: str, block_size: int, layout: str, hop: int) -> int:
    """Pure per-song work: a song's samples -> its blocks' spectra, streamed in chunks of blocks."""
    (n_samples,) = arrays.shape_of(src)
    if layout == "frames":
        return frames_song(src, dst, n_samples, block_size, hop)
    n_blocks = -(-n_samples // block_size)
    step = CHUNK_BLOCKS * block_size
    with arrays.NpyWriter(dst, (n_blocks, n_features(block_size, layout))) as out:
        for start in range(0, n_samples, step):
            chunk = to_blocks(arrays.read_rows(src, start, start + step), block_size)
            out.write(start // block_size, pack(chunk, layout))
    return n_blocks


def frames_song(src: str, dst: str, n_samples: int, n_fft: int, hop: int) -> int:
    """A song's log-magnitude frames, `CHUNK_BLOCKS` frames at a time from its memory map."""
    count = n_frames(n_samples, hop)
    with arrays.NpyWriter(dst, (count, n_features(n_fft, "frames"))) as out:
        for first in range(0, count, CHUNK_BLOCKS):
            stop = min(first + CHUNK_BLOCKS, count)
            out.write(first, song_frames(lambda a, b: arrays.read_rows(src, a, b), n_samples, first, stop,
                                         n_fft, hop))
    return count


def main(args) -> None:
    params = config.load_params(args.params)
    audio = config.AudioConfig.from_params(params)
    song_pool = pool.SongPool.from_params(params)
    # every audio setting: a song's samples change with the rate and scale, not its id; the
    # tensors stage reads them from here and writes them beside the tensors
    stamp = dict(audio=audio.as_dict(),
                 code=pool.source_digest("stages.arrays", "stages.layouts", "stages.fft_blocks"))
    pool.sync_songs(Path(args.npy), ".npy", Path(args.out), stamp, fft_song,
                    (audio.block_size, audio.layout, audio.hop), song_pool, "fft_blocks")


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--npy", default="data/interim/npy", help="npy folder (default: %(default)s)")
    parser.add_argument("--out", default="data/interim/fft", help="FFT folder (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
