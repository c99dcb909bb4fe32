"""Stage `wav_to_npy`: data/interim/wav/<id>.wav -> data/interim/npy/<id>.npy, float32 in [-1, 1].

int16 samples are divided by `wav_to_npy.scale`: 32768 (default) maps int16 exactly into [-1, 1);
32767 is what the seed did (its -32768 then lands just below -1). Incremental: only songs without an
up-to-date .npy are converted; a removed song's .npy is deleted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stages import arrays, audio, config, pool

CHUNK = 1 << 20


def wav_to_npy(src: str, dst: str, scale: float) -> int:
    """Pure per-song work: stream a 16-bit WAV into a float32 .npy of shape (n_samples,)."""
    n = audio.info(src).frames
    with arrays.NpyWriter(dst, (n,)) as out:
        start = 0
        for block in audio.int16_chunks(src, CHUNK):
            out.write(start, block.astype(np.float32) / np.float32(scale))
            start += len(block)
    return n


def main(args) -> None:
    params = config.load_params(args.params)
    # only the settings this stage uses (its params in dvc.yaml): a bad fft_blocks value stops
    # fft_blocks, and the arrays made before it are kept
    sample_rate = config.audio_setting(params, "sample_rate")
    scale = config.audio_setting(params, "scale")
    song_pool = pool.SongPool.from_params(params)
    # the rate too: a song decoded again at a new rate keeps its id, not its samples
    stamp = dict(sample_rate=sample_rate, scale=scale,
                 code=pool.source_digest("stages.arrays", "stages.audio", "stages.wav_to_npy"))
    pool.sync_songs(Path(args.wav), ".wav", Path(args.out), stamp, wav_to_npy, (scale,), song_pool,
                    "wav_to_npy")


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--wav", default="data/interim/wav", help="WAV folder (default: %(default)s)")
    parser.add_argument("--out", default="data/interim/npy", help="npy folder (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
