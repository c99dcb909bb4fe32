"""Stage `tensors`: data/interim/fft/<id>.npy -> the training tensors in data/processed/:

  songs/<id>_x.npy, <id>_y.npy  float32 (n_seq, max_seq_len, n_features): the song's sequences
  songs/<id>_stats.npy          float64 (3, n_features): count, mean and m2 of the song's x
  <name>_index.parquet          one row per sequence: split, seq, song_id, start_block, row
  <name>_mean.npy, <name>_var.npy   float32 (n_features,) mean and variance of the training x
  <name>_audio.json             the audio settings of the data (rate, scale, block, layout)

Each song's blocks are cut into sequences of `max_seq_len`; y is x shifted by one block, with a zero
block after the song's last one. Unlike the seed, the tail of a song is kept: its last sequence is
aligned to the song's end (overlapping the one before), and a song shorter than `max_seq_len` blocks is
zero-padded after its end. Songs go to validation by a hash of their content id, so the split of a song
never changes when others are added.

Incremental like the array stages before it: a song's files are made once (on all cores, or Dask)
and kept while the settings that made them stay, so a new song costs about one song; only the
index, the statistics and the audio settings are rewritten every run. The training mean and
variance are merged from the training songs' statistics files (Chan et al.), so no sequence is read
twice and memory does not grow with the dataset. Readers see a split as one array through
`Tensors.read` (stages/tensor_files.py); `--export FOLDER` writes it as the single `<name>_x.npy`,
`_y.npy`, `_val_x.npy`, `_val_y.npy`, `_mean.npy`, `_var.npy` files the stage once made.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from stages import arrays, config, files, layouts, manifest, pool
from stages.config import AudioConfig, UserError
from stages.tensor_files import PARTS, SONG_PARTS, Tensors

log = logging.getLogger("rawtune.tensors")
WINDOW_SEQS = 16  # sequences cut, written and counted at a time
INDEX_SCHEMA = pa.schema([("split", pa.string()), ("seq", pa.int64()), ("song_id", pa.string()),
                          ("start_block", pa.int64()), ("row", pa.int64())])
# the names of the stage's single files, now and in its earlier layout (`remove_stale_outputs`)
STAGE_FILES = tuple(f"_{p}.npy" for p in PARTS + ("mean", "var")) + ("_index.parquet",
                                                                     "_audio.json")


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
        if len(batch) == 0:
            return
        mean = batch.mean(axis=0, dtype=np.float64)     # float64 sums of float32 rows: no
        centred = batch - mean.astype(batch.dtype)      # float64 copy of the whole batch
        self.merge(len(batch), mean, np.einsum("ij,ij->j", centred, centred, dtype=np.float64))

    def merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Fold in the statistics of `n` more rows (their mean and sum of squared deviations)."""
        if n == 0:
            return
        delta = mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.count * n / total
        self.count = total

    def to_array(self) -> np.ndarray:
        """(3, n_features) float64: count, mean and m2, the per-song statistics file's rows."""
        return np.stack([np.full_like(self.mean, self.count), self.mean, self.m2])

    def merge_array(self, saved: np.ndarray) -> None:
        """Fold in statistics saved by `to_array`."""
        self.merge(int(saved[0, 0]), saved[1], saved[2])

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


def floored_variance(var: np.ndarray, fraction: float) -> np.ndarray:
    """Bins nearly silent in training (above an MP3's low-pass, say) would be blown up by
    normalising; their variance is raised to `fraction` of the average bin's."""
    floor = max(fraction * float(var.mean()), float(np.finfo(np.float32).tiny))
    return np.maximum(var, floor)


def song_tensors(src: str, x_dst: str, y_dst: str, stats_dst: str, max_seq_len: int,
                 pad: float = 0.0) -> int:
    """Pure per-song work: a song's blocks -> its x and y sequences and the statistics of its x,
    `WINDOW_SEQS` sequences at a time (so a song of any length costs a few MB); returns how many
    sequences it has. Blocks past the song's end are `pad` (silence in the data's layout)."""
    n_blocks, n_feat = arrays.shape_of(src)
    starts = sequence_starts(n_blocks, max_seq_len)
    shape = (len(starts), max_seq_len, n_feat)           # (n_seq, max_seq_len, n_features)
    stats = RunningStats(n_feat)
    with arrays.NpyWriter(x_dst, shape) as xw, arrays.NpyWriter(y_dst, shape) as yw:
        for i in range(0, len(starts), WINDOW_SEQS):
            group = starts[i:i + WINDOW_SEQS]
            part = arrays.read_rows(src, group[0], group[-1] + max_seq_len + 1)
            x, y = cut_sequences(part, group[0], n_blocks, group, max_seq_len, pad)
            xw.write(i, x)
            yw.write(i, y)
            stats.update(x)
    with files.atomic_path(stats_dst) as tmp, open(tmp, "wb") as f:
        np.save(f, stats.to_array())
    return len(starts)


@dataclass(frozen=True)
class TensorsConfig:
    max_seq_len: int
    val_fraction: float
    split_seed: int
    var_floor: float

    @classmethod
    def from_params(cls, params: dict) -> "TensorsConfig":
        p = config.section(params, "tensors", cls)
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


def make_song_files(fft_dir: Path, out: Tensors, max_seq_len: int, audio: AudioConfig,
                    song_pool: pool.SongPool) -> None:
    """Each song's x, y and statistics in out/songs, made only for songs that have none yet;
    all of them again when the sequence length, the blocks' settings or this code changed."""
    fft_code = (files.read_stamp(fft_dir) or {}).get("code")    # the code that made the blocks
    stamp = dict(max_seq_len=max_seq_len, audio=audio.as_dict(), fft_code=fft_code,
                 code=pool.source_digest("stages.arrays", "stages.tensors"))
    pool.sync_songs(fft_dir, ".npy", out.songs_dir, stamp, song_tensors,
                    (max_seq_len, layouts.silence(audio.layout)), song_pool, "tensors",
                    tuple(f"_{part}.npy" for part in SONG_PARTS))


def index_rows(fft_dir: Path, split: str, song_ids: list[str], max_seq_len: int) -> list[dict]:
    """One row per sequence of the split, songs in the order given; from the blocks' headers."""
    rows: list[dict] = []
    for song_id in song_ids:
        starts = sequence_starts(arrays.shape_of(fft_dir / f"{song_id}.npy")[0], max_seq_len)
        rows += [dict(split=split, seq=len(rows) + k, song_id=song_id, start_block=start, row=k)
                 for k, start in enumerate(starts)]
    return rows


def remove_stale_outputs(out: Tensors) -> None:
    """DVC keeps the persisted folder as it was: the single files of the stage's earlier layout,
    or another `tensors.name`'s files, are removed so the folder holds this run's data only."""
    keep = {out.index_path.name, out.path("mean").name, out.path("var").name, out.audio_path.name}
    for f in out.folder.iterdir():
        if f.is_file() and f.name not in keep and f.name.endswith(STAGE_FILES):
            f.unlink()


def write_tensors(fft_dir: Path, out: Tensors, train: list[str], val: list[str],
                  cfg: TensorsConfig, n_feat: int) -> list[dict]:
    """The index, and the training mean and variance merged from the training songs' statistics
    files (no sequence is read again); returns the index rows. The songs' files must exist."""
    stats = RunningStats(n_feat)
    for song_id in train:
        stats.merge_array(np.load(out.song_path(song_id, "stats"), allow_pickle=False))
    for suffix, values in (("mean", stats.mean), ("var", floored_variance(stats.var, cfg.var_floor))):
        with files.atomic_path(out.path(suffix)) as tmp, open(tmp, "wb") as f:
            np.save(f, values.astype(np.float32))
    index = (index_rows(fft_dir, "train", train, cfg.max_seq_len)
             + index_rows(fft_dir, "val", val, cfg.max_seq_len))
    files.write_parquet(out.index_path, index, INDEX_SCHEMA)
    return index


def export(tensors: Tensors, folder: Path) -> list[Path]:
    """The single files the stage wrote before it kept songs apart (`<name>_x.npy`, `_y.npy`,
    `_val_x.npy`, `_val_y.npy`, `_mean.npy`, `_var.npy`, the same bytes), streamed
    `WINDOW_SEQS` sequences at a time from the songs' files."""
    tensors.check()
    if folder.resolve() == tensors.folder.resolve():
        raise UserError(f"Export to another folder than '{tensors.folder}' (the tensors stage "
                        "removes single tensor files there).")
    written = []
    for part in PARTS:
        seqs = tensors.read(part)
        with arrays.NpyWriter(folder / f"{tensors.name}_{part}.npy", seqs.shape, seqs.dtype) as w:
            for start in range(0, len(seqs), WINDOW_SEQS):
                w.write(start, seqs[start:start + WINDOW_SEQS])
        written.append(w.path)
    for suffix in ("mean", "var"):
        with files.atomic_path(folder / f"{tensors.name}_{suffix}.npy") as tmp:
            shutil.copyfile(tensors.path(suffix), tmp)
        written.append(folder / f"{tensors.name}_{suffix}.npy")
    return written


def main(args) -> None:
    params = config.load_params(args.params)
    out = Tensors.from_params(args.out, params)
    if args.export:
        written = export(out, Path(args.export))
        log.info("tensors: exported %s", ", ".join(str(p) for p in written))
        return
    cfg = TensorsConfig.from_params(params)
    fft_dir = Path(args.fft)
    song_ids, ok_rows, rows = usable_songs(fft_dir, Path(args.manifest))
    audio = data_audio(fft_dir)
    n_feat = arrays.shape_of(fft_dir / f"{song_ids[0]}.npy")[1]
    train, val = split_songs(song_ids, cfg.val_fraction, cfg.split_seed)
    if not val:
        log.warning("only %d usable song(s): no validation set (add songs, or tensors.val_fraction "
                    "is 0)", len(song_ids))
    out.folder.mkdir(parents=True, exist_ok=True)
    files.remove_stale_tmp(out.folder)
    make_song_files(fft_dir, out, cfg.max_seq_len, audio, pool.SongPool.from_params(params))
    remove_stale_outputs(out)
    index = write_tensors(fft_dir, out, train, val, cfg, n_feat)
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
    parser.add_argument("--export", metavar="FOLDER",
                        help="write the tensors of --out as single <name>_x.npy, _y.npy, "
                             "_val_x.npy, _val_y.npy, _mean.npy, _var.npy files into FOLDER "
                             "and stop")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
