"""Stage `wav_to_npy`: data/interim/wav/<id>.wav -> data/interim/npy/<id>.npy, float32 in [-1, 1].

int16 samples are divided by `wav_to_npy.scale`: 32768 (default) maps int16 exactly into [-1, 1);
32767 is what the seed did (its -32768 then lands just below -1). Incremental: only songs without an
up-to-date .npy are converted; a removed song's .npy is deleted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from stages import arrays, common

CHUNK = 1 << 20


def wav_to_npy(src: str, dst: str, scale: float) -> int:
    """Pure per-song work: stream a 16-bit WAV into a float32 .npy of shape (n_samples,)."""
    with sf.SoundFile(src) as f:
        n = f.frames
        with arrays.NpyWriter(dst, (n,)) as out:
            start = 0
            for block in f.blocks(CHUNK, dtype="int16"):
                out.write(start, block.astype(np.float32) / np.float32(scale))
                start += len(block)
    return n


def main(args) -> None:
    params = common.load_params(args.params)
    scale = common.param(params, "wav_to_npy.scale", (int, float), choices=(32768, 32767))
    pool = common.SongPool.from_params(params)
    stamp = dict(scale=scale, code=common.source_digest("stages.arrays", "stages.wav_to_npy"))
    common.sync_songs(Path(args.wav), ".wav", Path(args.out), stamp, wav_to_npy, (scale,), pool,
                      "wav_to_npy")


def build_parser():
    parser = common.stage_parser(__doc__)
    parser.add_argument("--wav", default="data/interim/wav", help="WAV folder (default: %(default)s)")
    parser.add_argument("--out", default="data/interim/npy", help="npy folder (default: %(default)s)")
    return parser


if __name__ == "__main__":
    common.cli(main, build_parser())
