"""Memory-mapped .npy files: written in slices and read lazily, so no stage ever holds a whole
dataset (or a whole long song) in memory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from stages import files
from stages.config import UserError


class NpyWriter:
    """Write a .npy of known shape slice by slice, atomically: the file appears under its final name
    only after every slice is written. Each slice is written through a fresh mapping that is flushed
    and dropped at once, so resident memory stays at one slice, not the file."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype=np.float32):
        self.path = Path(path)
        self.shape = tuple(shape)
        self._atomic = files.atomic_path(self.path)
        self.tmp = self._atomic.__enter__()
        mm = open_memmap(self.tmp, mode="w+", dtype=dtype, shape=self.shape)  # header, sparse body
        del mm

    def write(self, start: int, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        mm = open_memmap(self.tmp, mode="r+")
        mm[start:start + len(rows)] = rows
        mm.flush()
        del mm

    def __enter__(self) -> "NpyWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._atomic.__exit__(*exc)


def read(path: str | Path, what: str = "array", stage: str = "") -> np.ndarray:
    """Open a .npy read-only and memory-mapped; one sentence naming the file (`what` it should
    hold, and the `stage` that writes it) when it cannot be read (cut short by a full disk,
    replaced by hand)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        if not Path(path).is_file():
            raise                      # a missing file is each caller's own sentence
        raise UserError(f"'{path}' is not a readable {what} ({err}); run `dvc repro"
                        f"{' ' + stage if stage else ''}` to write it again.") from err


def read_rows(path: str | Path, start: int, stop: int) -> np.ndarray:
    """Copy rows [start, stop) of a .npy into memory through a mapping dropped right after, so
    reading a long file slice by slice never keeps the whole file resident."""
    mm = read(path)
    rows = np.array(mm[start:stop])
    del mm
    return rows


def shape_of(path: str | Path) -> tuple[int, ...]:
    """A .npy's shape (maps the file; reads only its header)."""
    return read(path).shape
