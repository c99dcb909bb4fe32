"""Files that are never half-written: every output appears under its final name only when it is
complete (temp file, then rename), and a killed run's leftovers are hidden *.tmp files that the
next run deletes.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TMP_SUFFIX = ".tmp"  # every half-written file ends with this and starts with "."
STAMP = ".stamp.json"  # in a folder of per-song outputs: the settings and code that made them


def tmp_path_for(path: Path) -> Path:
    """A sibling name that never looks like a finished output: hidden and ending in .tmp."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed over `path`, on failure removed.
    A run killed mid-write leaves only a hidden *.tmp file, which the next run deletes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> dict | None:
    """A JSON file written by `write_json`, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def remove_stale_tmp(folder: Path) -> None:
    if folder.is_dir():
        for leftover in folder.glob(f".*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def read_stamp(folder: Path) -> dict | None:
    """The settings the per-song outputs in `folder` were made with (`pool.prepare_out_dir`)."""
    return read_json(Path(folder) / STAMP)


def read_parquet(path: str | Path, columns: list[str] | None = None):
    """A parquet file as a pyarrow Table, read without pyarrow.dataset (whose import, through
    `pq.read_table`, costs a stage process ~0.5 s)."""
    import pyarrow.parquet as pq
    return pq.ParquetFile(path).read(columns=columns)
