"""The manifest: decode's account of every input file (one row each: path, content id, status,
reason, duration, ...), read by the later stages to know which songs are usable.
"""
from __future__ import annotations

from pathlib import Path

from stages.files import read_parquet, write_parquet

MANIFEST_COLUMNS = [("path", "string"), ("id", "string"), ("status", "string"),
                    ("reason", "string"), ("seconds", "float64"), ("sample_rate_in", "int64"),
                    ("channels_in", "int64"), ("frames", "int64"), ("peak_dbfs", "float64"),
                    ("size", "int64"), ("mtime_ns", "int64")]


def read_manifest(path: str | Path) -> list[dict]:
    return read_parquet(path).to_pylist()


def write_manifest(path: str | Path, rows: list[dict]) -> None:
    import pyarrow as pa
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in MANIFEST_COLUMNS])
    write_parquet(path, rows, schema)
