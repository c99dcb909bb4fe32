"""Stage `tensors`: data/interim/fft/<id>.npy -> the training tensors in data/processed/:

  <name>_x.npy, <name>_y.npy          float32 (n_seq, max_seq_len, n_features), training songs
  <name>_val_x.npy, <name>_val_y.npy  the same for validation songs (a song is in one split only)
  <name>_mean.npy, <name>_var.npy     float32 (n_features,) mean and variance of the training x
  <name>_index.parquet                one row per sequence: split, seq, song_id, start_block
  <name>_audio.json                   the audio settings of the data (rate, scale, block, layout)

Each song's blocks are cut into sequences of `max_seq_len`; y is x shifted by one block, with a zero
block after the song's last one. Unlike the seed, the tail of a song is kept: its last sequence is
aligned to the song's end (overlapping the one before), and a song shorter than `max_seq_len` blocks is
zero-padded after its end. Songs go to validation by a hash of their content id, so the split of a song
never changes when others are added. Arrays are written slice by slice through memory maps and the
statistics are merged song by song (Chan et al.), so memory does not grow with the dataset.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from stages import arrays, config, files, layouts, manifest
from stages.config import AudioConfig, UserError
from stages.tensor_files import Tensors

log = logging.getLogger("rawtune.tensors")
WINDOW_SEQS = 16  # sequences cut, written and counted at a time
INDEX_SCHEMA = pa.schema([("split", pa.string()), ("seq", pa.int64()), ("song_id", pa.string()),
                          ("start_block", pa.int64())])


def sequence_starts(n_blocks: int, max_seq_len: int) -> list[int]:
    """First block of each sequence: back to back, plus one aligned to the song's end."""
    if n_blocks <= max_seq_len:
        return [0]
    starts = list(range(0, n_blocks - max_seq_len + 1, max_seq_len))
    if starts[-1] + max_seq_len < n_blocks:
        starts.append(n_blocks - max_seq_len)
    return starts


def cut_sequences(part: np.ndarray, first: int, n_blocks: int, starts: list[int],
                  max_seq_len: int, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """x, y (len(starts), max_seq_len, n_features) for the sequences beginning at `starts`, from
    `part` = the song's blocks[first:first + len(part)]; blocks past the song's end are silence
    (`pad` in every feature: zero for spectra, the floor for log-magnitudes)."""
    stop = starts[-1] + max_seq_len + 1
    padded = np.full((stop - first, part.shape[-1]), pad, dtype=np.float32)
    kept = min(len(part), n_blocks - first, stop - first)
    padded[:kept] = part[:kept]                                   # zero block(s) after the end
    x = np.stack([padded[s - first:s - first + max_seq_len] for s in starts])
    y = np.stack([padded[s - first + 1:s - first + 1 + max_seq_len] for s in starts])
    return x, y


def song_sequences(blocks: np.ndarray, max_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_blocks, n_features) -> x, y of shape (n_seq, max_seq_len, n_features); y[t] = x[t + 1]."""
    return cut_sequences(blocks, 0, len(blocks), sequence_starts(len(blocks), max_seq_len),
                         max_seq_len)


def is_validation(song_id: str, val_fraction: float, salt: int) -> bool:
    """A song's split from its id alone: stable whatever other songs come and go."""
    digest = hashlib.blake2b(f"{salt}:{song_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def split_songs(song_ids: list[str], val_fraction: float, salt: int) -> tuple[list[str], list[str]]:
    """(train ids, val ids). With two or more songs and val_fraction > 0, at least one song is held
    out (the one whose hash is lowest, so this choice is stable too) and at least one trains."""
    val = [s for s in song_ids if is_validation(s, val_fraction, salt)]
    if val_fraction > 0 and len(song_ids) >= 2 and not val:
        val = [min(song_ids, key=lambda s: hashlib.blake2b(f"{salt}:{s}".encode()).digest())]
    if len(val) == len(song_ids):  # at least one song always trains
        val = val[:-1]
    train = [s for s in song_ids if s not in set(val)]
    return train, val


class RunningStats:
    """Per-feature mean and variance merged batch by batch (Chan et al.), in float64."""

    def __init__(self, n_features: int):
        self.count = 0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def update(self, batch: np.ndarray) -> None:
        batch = batch.reshape(-1, batch.shape[-1])                     # (n_rows, n_features)
        n = len(batch)
        if n == 0:
            return
        mean = batch.mean(axis=0, dtype=np.float64)     # float64 sums of float32 rows: no
        centred = batch - mean.astype(batch.dtype)      # float64 copy of the whole batch
        m2 = np.einsum("ij,ij->j", centred, centred, dtype=np.float64)
        delta = mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


def floored_variance(var: np.ndarray, fraction: float) -> np.ndarray:
    """Bins nearly silent in training (above an MP3's low-pass, say) would be blown up by
    normalising; their variance is raised to `fraction` of the average bin's."""
    floor = max(fraction * float(var.mean()), float(np.finfo(np.float32).tiny))
    return np.maximum(var, floor)


def write_split(fft_dir: Path, song_ids: list[str], max_seq_len: int, n_feat: int,
                x_path: Path, y_path: Path, stats: RunningStats | None,
                pad: float = 0.0) -> list[dict]:
    """Stream the sequences of `song_ids` into x/y files, `WINDOW_SEQS` sequences at a time (so a
    song of any length costs a few MB); returns the index rows."""
    songs = [(s, arrays.shape_of(fft_dir / f"{s}.npy")[0]) for s in song_ids]
    starts = {s: sequence_starts(n, max_seq_len) for s, n in songs}
    shape = (sum(len(v) for v in starts.values()), max_seq_len, n_feat)
    index, seq = [], 0
    with arrays.NpyWriter(x_path, shape) as xw, arrays.NpyWriter(y_path, shape) as yw:
        for song_id, n_blocks in tqdm(songs, desc="tensors", unit="song", disable=None, leave=False):
            path = fft_dir / f"{song_id}.npy"
            for i in range(0, len(starts[song_id]), WINDOW_SEQS):
                group = starts[song_id][i:i + WINDOW_SEQS]
                part = arrays.read_rows(path, group[0], group[-1] + max_seq_len + 1)
                x, y = cut_sequences(part, group[0], n_blocks, group, max_seq_len, pad)
                xw.write(seq, x)
                yw.write(seq, y)
                if stats is not None:
                    stats.update(x)
                index += [dict(seq=seq + k, song_id=song_id, start_block=start)
                          for k, start in enumerate(group)]
                seq += len(group)
    return index


@dataclass(frozen=True)
class TensorsConfig:
    max_seq_len: int
    val_fraction: float
    split_seed: int
    var_floor: float

    @classmethod
    def from_params(cls, params: dict) -> "TensorsConfig":
        p = config.section(params, "tensors")
        val_fraction = p("val_fraction", (int, float), minimum=0, below=1)
        return cls(max_seq_len=p("max_seq_len", int, minimum=1), val_fraction=val_fraction,
                   split_seed=p("split_seed", int),
                   var_floor=p("var_floor", (int, float), minimum=0))


def usable_songs(fft_dir: Path, manifest_path: Path) -> tuple[list[str], list[dict], list[dict]]:
    """(ids of the songs to use, their manifest rows, every manifest row) and the audio settings
    the songs' blocks were made with (the fft_blocks stage's stamp)."""
    if not manifest_path.is_file():
        raise UserError(f"Manifest '{manifest_path}' not found; run `dvc repro decode` first.")
    rows = manifest.read_manifest(manifest_path)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    ok = {r["id"] for r in ok_rows}
    song_ids = sorted(p.stem for p in fft_dir.glob("*.npy") if p.stem in ok)
    if not song_ids:
        raise UserError(f"No songs in '{fft_dir}'; run `dvc repro fft_blocks` first.")
    return song_ids, ok_rows, rows


def data_audio(fft_dir: Path) -> AudioConfig:
    """The audio settings `fft_blocks` recorded for the blocks in `fft_dir`."""
    stamp = files.read_stamp(fft_dir) or {}
    try:
        return AudioConfig.from_dict(stamp["audio"])
    except (KeyError, TypeError) as err:
        raise UserError(f"'{fft_dir}' does not say which audio settings made it; run `dvc repro "
                        "fft_blocks` first.") from err


def write_tensors(fft_dir: Path, out: Tensors, train: list[str], val: list[str],
                  cfg: TensorsConfig, n_feat: int, pad: float = 0.0) -> list[dict]:
    """Both splits' x/y, the training statistics and the index; returns the index rows."""
    out.folder.mkdir(parents=True, exist_ok=True)
    files.remove_stale_tmp(out.folder)
    stats = RunningStats(n_feat)
    index = [dict(r, split="train") for r in write_split(
        fft_dir, train, cfg.max_seq_len, n_feat, out.path("x"), out.path("y"), stats, pad)]
    index += [dict(r, split="val") for r in write_split(
        fft_dir, val, cfg.max_seq_len, n_feat, out.path("val_x"), out.path("val_y"), None, pad)]
    for suffix, values in (("mean", stats.mean), ("var", floored_variance(stats.var, cfg.var_floor))):
        with files.atomic_path(out.path(suffix)) as tmp, open(tmp, "wb") as f:
            np.save(f, values.astype(np.float32))
    with files.atomic_path(out.index_path) as tmp:
        pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), tmp)
    return index


def main(args) -> None:
    params = config.load_params(args.params)
    cfg = TensorsConfig.from_params(params)
    fft_dir, out = Path(args.fft), Tensors.from_params(args.out, params)
    song_ids, ok_rows, rows = usable_songs(fft_dir, Path(args.manifest))
    audio = data_audio(fft_dir)
    n_feat = arrays.shape_of(fft_dir / f"{song_ids[0]}.npy")[1]
    train, val = split_songs(song_ids, cfg.val_fraction, cfg.split_seed)
    if not val:
        log.warning("only %d usable song(s): no validation set (add songs, or tensors.val_fraction "
                    "is 0)", len(song_ids))
    index = write_tensors(fft_dir, out, train, val, cfg, n_feat, layouts.silence(audio.layout))
    files.write_json(out.audio_path, audio.as_dict())

    n_train = sum(r["split"] == "train" for r in index)
    summary = dict(songs_ok=len(song_ids), songs_skipped=len(rows) - len(ok_rows),
                   songs_train=len(train), songs_val=len(val), sequences_train=n_train,
                   sequences_val=len(index) - n_train, max_seq_len=cfg.max_seq_len,
                   n_features=n_feat, minutes=round(sum(r["seconds"] for r in ok_rows) / 60, 2),
                   audio=audio.as_dict())
    files.write_json(args.metrics, summary)
    log.info("tensors: %d train sequences from %d songs, %d validation sequences from %d songs, "
             "%d features -> %s", n_train, len(train), summary["sequences_val"], len(val), n_feat,
             out.folder)


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--fft", default="data/interim/fft", help="FFT folder (default: %(default)s)")
    parser.add_argument("--manifest", default="data/interim/manifest.parquet",
                        help="decode's manifest (default: %(default)s)")
    parser.add_argument("--out", default="data/processed", help="output folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/preprocess.json",
                        help="summary metrics file (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
