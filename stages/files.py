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


def write_parquet(path: str | Path, rows: list[dict], schema) -> None:
    """`rows` (dicts) as a parquet file of `schema` (a pyarrow schema), written atomically.
    Columns of int64, float64 and string without nulls are built straight from their buffers:
    pyarrow's usual constructors look for pandas first, which imports it (~0.4 s of every
    decode and tensors run, which never use pandas); anything else goes through from_pylist."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    columns = [[row[field.name] for row in rows] for field in schema]
    if all(_plain(field.type, values) for field, values in zip(schema, columns)):
        table = pa.Table.from_arrays([_column(field.type, values, len(rows))
                                      for field, values in zip(schema, columns)], schema=schema)
    else:
        table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _plain(kind, values: list) -> bool:
    import pyarrow as pa
    return kind in (pa.int64(), pa.float64(), pa.string()) and all(v is not None for v in values)


def _column(kind, values: list, n: int):
    import numpy as np
    import pyarrow as pa
    if kind == pa.string():
        encoded = [str(v).encode("utf-8") for v in values]
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    else:
        dtype = np.int64 if kind == pa.int64() else np.float64
        buffers = [None, pa.py_buffer(np.asarray(values, dtype).reshape(n))]
    return pa.Array.from_buffers(kind, n, buffers)
