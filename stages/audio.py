"""The one module that reads and writes audio: content ids, streaming decode to mono 16-bit WAV at
the pipeline's rate (any format libsndfile reads, recognised by content).

Decoding streams in chunks (read -> mean of channels -> soxr resample -> int16 -> write), so memory
stays flat however long a song is.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

CHUNK_FRAMES = 1 << 16
MIN_RATE_IN, MAX_RATE_IN = 1000, 1_000_000  # Hz; outside this a header is corrupt, not music
INT16_SCALE = 32768.0  # float x in [-1, 1) <-> int16 round(x * 32768); the exact inverse of /32768


class AudioError(Exception):
    """This file cannot be used as audio; the message says why, in a few words."""


@dataclass(frozen=True)
class Decoded:
    seconds: float          # duration of the input
    sample_rate_in: int
    channels_in: int
    frames_out: int         # mono frames written at the output rate
    peak: float             # max |sample| of the mono output, before int16 conversion


def content_id(path: str | Path, chunk: int = 1 << 20) -> str:
    """Stable id of a file's bytes: the same content always gets the same id, whatever its name."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def to_int16(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Float samples -> int16, clipped (never wrapped); returns the samples and how many clipped."""
    scaled = np.round(x * INT16_SCALE)
    clipped = int(np.count_nonzero((scaled > 32767) | (scaled < -32768)))
    return np.clip(scaled, -32768, 32767).astype(np.int16), clipped


def decode_to_wav(src: str | Path, dst: str | Path, sample_rate: int) -> Decoded:
    """Decode `src` (any libsndfile format, any depth/rate/channels) to a mono 16-bit WAV at
    `sample_rate` written to `dst`. Raises AudioError for unreadable, empty or non-finite audio."""
    try:
        f = sf.SoundFile(str(src))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError("is not a readable audio file") from err
    with f:
        rate_in, channels = f.samplerate, f.channels
        if channels <= 0:
            raise AudioError("has no audio channels")
        if not MIN_RATE_IN <= rate_in <= MAX_RATE_IN:  # a corrupt header; soxr would need GBs
            raise AudioError(f"has an implausible sample rate ({rate_in} Hz)")
        resampler = None
        if rate_in != sample_rate:
            resampler = soxr.ResampleStream(rate_in, sample_rate, 1, dtype="float32", quality="HQ")
        frames_in = frames_out = 0
        peak = 0.0
        with sf.SoundFile(str(dst), "w", samplerate=sample_rate, channels=1,
                          subtype="PCM_16", format="WAV") as out:
            while True:
                try:
                    chunk = f.read(CHUNK_FRAMES, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as err:
                    raise AudioError("is corrupt and could not be decoded") from err
                last = len(chunk) < CHUNK_FRAMES
                if not np.isfinite(chunk).all():
                    raise AudioError("contains NaN or infinite samples")
                frames_in += len(chunk)
                mono = chunk.mean(axis=1, dtype=np.float32)  # (frames, channels) -> (frames,)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                if len(mono):
                    peak = max(peak, float(np.abs(mono).max()))
                    out.write(to_int16(mono)[0])
                    frames_out += len(mono)
                if last:
                    break
    if frames_in == 0:
        raise AudioError("contains no audio samples")
    return Decoded(seconds=frames_in / rate_in, sample_rate_in=rate_in, channels_in=channels,
                   frames_out=frames_out, peak=peak)
