"""The one module that reads and writes audio files (stages, benchmarks and tests alike): content
ids, streaming decode to mono 16-bit WAV at the pipeline's rate (any format libsndfile reads,
recognised by content), reading samples back, resampling, and writing songs in any format with
bytes that depend only on the samples.

Decoding streams in chunks (read -> mean of channels -> soxr resample -> int16 -> write), so memory
stays flat however long a song is.
"""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from stages.files import atomic_path

CHUNK_FRAMES = 1 << 16
WRITE_FRAMES = 1 << 14     # libsndfile's Vorbis encoder crashes on very large writes
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


def downmix(chunk: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 -> (frames,), the mean of the channels, summing whole columns:
    7x faster than a reduction along the short axis (0.15 s of decoding a 2.5-minute stereo song),
    and bit for bit what `chunk.mean(axis=1)` gives up to 6 channels."""
    mono = chunk[:, 0].copy()
    for c in range(1, chunk.shape[1]):
        mono += chunk[:, c]
    if chunk.shape[1] > 1:
        mono /= np.float32(chunk.shape[1])
    return mono


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
                mono = downmix(chunk)
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


def decode_samples(src: str | Path, sample_rate: int, scale: float) -> np.ndarray:
    """A file's mono samples exactly as the pipeline makes them (decode to 16-bit WAV, then
    int16 / scale), for audio that is not part of the dataset (a user's seed file)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "decoded.wav"
        decode_to_wav(src, wav, sample_rate)
        return sf.read(str(wav), dtype="int16")[0].astype(np.float32) / np.float32(scale)


# --- reading ------------------------------------------------------------------------------------

def info(path: str | Path):
    """libsndfile's description of a file: frames, samplerate, channels, format, subtype."""
    return sf.info(str(path))


def read(path: str | Path, dtype: str = "float64") -> tuple[np.ndarray, int]:
    """(samples (n_frames, channels), sample rate) of a whole file."""
    return sf.read(str(path), dtype=dtype, always_2d=True)


def read_mono(path: str | Path, dtype: str = "float64") -> tuple[np.ndarray, int]:
    """(mean of the channels (n_frames,), sample rate) of a whole file."""
    samples, rate = read(path, dtype)
    return samples.mean(axis=1, dtype=samples.dtype), rate


def int16_chunks(path: str | Path, frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
    """A 16-bit file's samples as int16, `frames` at a time (mono files: 1-D chunks)."""
    with sf.SoundFile(str(path)) as f:
        yield from f.blocks(frames, dtype="int16")


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Whole-signal soxr resampling ((n,) or (n, channels)), float32; a no-op at the same rate."""
    if rate_in == rate_out:
        return samples
    return soxr.resample(samples, rate_in, rate_out).astype(np.float32)


# --- writing ------------------------------------------------------------------------------------

FORMATS = {".mp3": "MP3", ".flac": "FLAC", ".ogg": "OGG", ".wav": "WAV"}


def write(path: str | Path, samples: np.ndarray, rate: int, fmt: str | None = None,
          subtype: str | None = None, ogg_serial: int = 0) -> Path:
    """Write samples ((n,) or (n, channels); float in [-1, 1] or int16) atomically, in chunks,
    in `fmt` (from the suffix unless given). An Ogg file gets the fixed stream serial
    `ogg_serial`, so the same samples always give the same bytes (and the same content id)."""
    return _write(path, samples, rate, fmt, subtype, ogg_serial)


def write_lame_mp3(path: str | Path, samples: np.ndarray, rate: int) -> Path:
    """An MP3 as the `lame` command line writes one by default, 128 kbit/s CBR (what the seed's
    code made; the benchmark imitates it)."""
    return _write(path, samples, rate, "MP3", None, 0, bitrate_mode="CONSTANT",
                  compression_level=0.667)


def _write(path: str | Path, samples: np.ndarray, rate: int, fmt: str | None,
           subtype: str | None, ogg_serial: int, **encoder) -> Path:
    """`write`, with libsndfile's encoder settings (`bitrate_mode`, `compression_level`)."""
    path = Path(path)
    fmt = fmt or FORMATS[path.suffix.lower()]
    channels = samples.shape[1] if samples.ndim == 2 else 1
    with atomic_path(path) as tmp:
        with sf.SoundFile(str(tmp), "w", rate, channels, format=fmt, subtype=subtype,
                          **encoder) as f:
            for start in range(0, len(samples), WRITE_FRAMES):
                f.write(samples[start:start + WRITE_FRAMES])
        if fmt == "OGG":
            fix_ogg_serial(tmp, ogg_serial)
    return path


def write_song(path: str | Path, samples: np.ndarray, rate: int, fmt: str) -> Path:
    """A generated song: 16-bit WAV (`to_int16`, the exact inverse of the pipeline's /32768)
    or MP3, mono."""
    if fmt == "mp3":
        return write(path, samples, rate, "MP3")
    return write(path, to_int16(samples)[0], rate, "WAV", "PCM_16")


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


def fix_ogg_serial(path: Path, serial: int) -> None:
    """libsndfile gives each Ogg stream a random serial number, so the same song would get new
    bytes (and a new content id) on every machine: set it, and each page's checksum, to fixed ones."""
    data, table, pos = bytearray(Path(path).read_bytes()), _ogg_crc_table(), 0
    while pos < len(data) and data[pos:pos + 4] == b"OggS":
        n_segments = data[pos + 26]
        end = pos + 27 + n_segments + sum(data[pos + 27:pos + 27 + n_segments])
        data[pos + 14:pos + 18] = serial.to_bytes(4, "little")
        data[pos + 22:pos + 26] = bytes(4)
        crc = 0
        for byte in data[pos:end]:
            crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
        data[pos + 22:pos + 26] = crc.to_bytes(4, "little")
        pos = end
    Path(path).write_bytes(data)
