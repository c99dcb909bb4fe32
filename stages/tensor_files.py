"""The `tensors` stage's outputs by name, and the one reader of them, for the stage that writes
them and every stage that reads them. In the folder (data/processed):

  songs/<song_id>_x.npy, _y.npy   float32 (n_seq, max_seq_len, n_features): one song's sequences
  songs/<song_id>_stats.npy       float64 (3, n_features): count, mean and m2 of that song's x
  <name>_index.parquet            one row per sequence: split, seq (its place in the split),
                                  song_id, start_block, row (its place in the song's files)
  <name>_mean.npy, <name>_var.npy float32 (n_features,): statistics of the training x
  <name>_audio.json               the audio settings the tensors were made with (the same
                                  settings every model trained on them carries)

A song's files never change when other songs come and go, so adding one song writes (and DVC
hashes) that song and the small files only. `Tensors.read("x")` (or "y", "val_x", "val_y") is a
split's sequences in index order as one array-like over the songs' memory maps, indexed like the
single `<name>_x.npy` the stage once wrote.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import arrays
from stages.config import AudioConfig, UserError, tensors_name
from stages.files import read_json, read_parquet

SONGS = "songs"                        # the folder of per-song files inside the tensors' folder
SONG_PARTS = ("x", "y", "stats")       # <song_id>_<part>.npy
PARTS = ("x", "y", "val_x", "val_y")   # what `Tensors.read` reads: a split's x or y
SPLITS = {"": "train", "val_": "val"}  # readers' split prefix -> the index's split name
OPEN_MAPS = 32                         # songs mapped at once by one reader: a library of 1000
                                       # songs must not hold 1000 maps (and the kernel's limit)


class SongSequences:
    """A split's sequences, song after song in index order, read lazily from the songs' memory
    maps. Indexes like numpy on the first axis (int, slice, integer array in any order) followed
    by basic indexes (`[picks, :k]`) or integer arrays paired with the first
    (`[seq_idx, step_idx]`); every result is a new in-memory array."""

    def __init__(self, paths: list[Path], song: np.ndarray, row: np.ndarray,
                 seq_shape: tuple[int, ...], dtype):
        self._paths = paths                             # one file per song
        self._song = np.asarray(song, np.int64)         # (n_seq,) each sequence's song
        self._row = np.asarray(row, np.int64)           # (n_seq,) its row in that song's file
        self.shape = (len(self._song), *seq_shape)
        self.dtype = np.dtype(dtype)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _map(self, song: int) -> np.ndarray:
        """The song's file, mapped; the least recently used map is dropped past `OPEN_MAPS`."""
        mm = self._maps.pop(song, None)
        if mm is None:
            mm = arrays.read(self._paths[song])
            if len(self._maps) >= OPEN_MAPS:
                self._maps.popitem(last=False)
        self._maps[song] = mm
        return mm

    def _seqs(self, first) -> np.ndarray:
        """The first axis's index as sequence numbers (negative ones counted from the end)."""
        if isinstance(first, slice):
            return np.arange(len(self))[first]
        seqs = np.asarray(first)
        if seqs.dtype == bool:
            return np.flatnonzero(seqs)
        if seqs.dtype.kind not in "iu":
            raise IndexError(f"sequences are indexed by integers, not {seqs.dtype}")
        seqs = np.where(seqs < 0, seqs + len(self), seqs)
        if seqs.size and (seqs.min() < 0 or seqs.max() >= len(self)):
            raise IndexError(f"sequence index out of range for {len(self)} sequences")
        return seqs

    def __getitem__(self, key) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        n_paired = next((i for i, k in enumerate(rest) if not _is_array(k)), len(rest))
        paired, basic = rest[:n_paired], rest[n_paired:]
        if any(_is_array(k) for k in basic):
            raise IndexError("integer arrays must come right after the sequence index")
        seqs, *paired = np.broadcast_arrays(self._seqs(first), *map(np.asarray, paired))
        out_shape = seqs.shape
        seqs, paired = seqs.ravel(), [p.ravel() for p in paired]
        # the shape of what one sequence gives, from a zero-strided stand-in of one sequence
        tail = np.broadcast_to(np.zeros((), self.dtype), self.shape[1:])[
            (*[0] * len(paired), *basic)].shape
        out = np.empty((len(seqs), *tail), self.dtype)
        songs = self._song[seqs]
        order = np.argsort(songs, kind="stable")
        numbers, starts = np.unique(songs[order], return_index=True)
        for song, at in zip(numbers, np.split(order, starts[1:])):   # one map per song
            out[at] = self._map(song)[(self._row[seqs[at]], *(p[at] for p in paired), *basic)]
        return out.reshape(out_shape + tail)


def _is_array(key) -> bool:
    return isinstance(key, (list, np.ndarray))


@dataclass(frozen=True)
class Tensors:
    """The `tensors` stage's outputs for one dataset name."""
    folder: Path
    name: str

    @classmethod
    def from_params(cls, folder: str | Path, params: dict) -> "Tensors":
        return cls(Path(folder), tensors_name(params))

    def path(self, suffix: str) -> Path:
        """`<name>_<suffix>.npy`: the statistics (`mean`, `var`)."""
        return self.folder / f"{self.name}_{suffix}.npy"

    @property
    def songs_dir(self) -> Path:
        return self.folder / SONGS

    def song_path(self, song_id: str, part: str) -> Path:
        """A song's `x`, `y` or `stats` file."""
        return self.songs_dir / f"{song_id}_{part}.npy"

    @property
    def index_path(self) -> Path:
        return self.folder / f"{self.name}_index.parquet"

    @property
    def audio_path(self) -> Path:
        return self.folder / f"{self.name}_audio.json"

    def check(self) -> None:
        """One sentence when a file the readers need is missing."""
        needed = [self.index_path, self.path("mean"), self.path("var"), self.audio_path]
        for path in needed + [self.song_path(s, p) for s in self.song_ids() for p in ("x", "y")]:
            if not path.is_file():
                raise UserError(f"Training tensor file '{path}' not found; run `dvc repro "
                                "tensors` first.")

    def audio(self) -> AudioConfig:
        """The audio settings the tensors were made with."""
        if not self.audio_path.is_file():
            raise UserError(f"'{self.audio_path}' not found; run `dvc repro tensors` first.")
        settings = read_json(self.audio_path)
        try:
            return AudioConfig.from_dict(settings)
        except (TypeError, KeyError) as err:
            raise UserError(f"'{self.audio_path}' does not hold the data's audio settings; run "
                            "`dvc repro tensors` again.") from err

    def index(self, split: str | None = None) -> dict[str, list]:
        """The index's columns (of one split's rows, "train" or "val", in sequence order)."""
        if not self.index_path.is_file():
            return dict(split=[], seq=[], song_id=[], start_block=[], row=[])
        table = read_parquet(self.index_path)
        if split is not None:
            import pyarrow.compute as pc
            table = table.filter(pc.equal(table["split"], split)).sort_by("seq")
        return table.to_pydict()

    def song_ids(self) -> list[str]:
        """Every song of the index, training songs first, each in its split's order."""
        return list(dict.fromkeys(self.index()["song_id"]))

    def n_sequences(self, split: str = "") -> int:
        """Sequences of the split ("" training, "val_" validation)."""
        return len(self.index(SPLITS[split])["seq"])

    def shape(self) -> tuple[int, int]:
        """(max_seq_len, n_features), from the header of one song's file."""
        return self._header("x")[0]

    def _header(self, part: str) -> tuple[tuple[int, ...], np.dtype]:
        """The shape of one sequence and the dtype of the songs' `part` files (the first song's:
        every song has the same, and an empty split has no song of its own to ask)."""
        songs = self.song_ids()
        if not songs:
            raise UserError(f"'{self.index_path}' lists no songs; run `dvc repro tensors` first.")
        head = arrays.read(self.song_path(songs[0], part))
        return tuple(head.shape[1:]), head.dtype

    def read(self, part: str) -> SongSequences:
        """A split's x or y (`part` in PARTS) as one array-like over the songs' memory maps, in
        index order: what `<name>_<part>.npy` held when the stage wrote one file."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, not {part!r}")
        split, kind = ("val", part[4:]) if part.startswith("val_") else ("train", part)
        index = self.index(split)
        songs = list(dict.fromkeys(index["song_id"]))
        number = {song: i for i, song in enumerate(songs)}
        return SongSequences([self.song_path(s, kind) for s in songs],
                             np.array([number[s] for s in index["song_id"]], np.int64),
                             np.array(index["row"], np.int64), *self._header(kind))

    def files(self) -> list[Path]:
        """Every file the tensors are: what a reader's identity of the data must cover."""
        return sorted([p for p in (self.index_path, self.path("mean"), self.path("var"),
                                   self.audio_path) if p.is_file()]
                      + [p for p in self.songs_dir.glob("*.npy") if not p.name.startswith(".")])
