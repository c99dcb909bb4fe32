"""Shared plumbing for the stages: params, the product's error type, atomic writes, incremental
per-song work on a process pool, and the command-line wrapper that turns user errors into one sentence.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml
from tqdm import tqdm

log = logging.getLogger("rawtune")

PARAMS_FILE = "params.yaml"
TMP_SUFFIX = ".tmp"  # every half-written file ends with this and starts with "."


class UserError(Exception):
    """A mistake the user can fix (bad params, no usable audio); its message is one sentence."""


# --- params -----------------------------------------------------------------------------------

def load_params(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Parameter file {path} not found; run from the project root.")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"Parameter file {path} is not valid YAML ({err.__class__.__name__}).") from err
    return params


def param(params: dict, key: str, kind: type | tuple = object, choices: Iterable | None = None,
          minimum: float | None = None) -> Any:
    """Return `params[key]` for a dotted key ("fft_blocks.block_size"), checked against its type,
    allowed values and lower bound, with one sentence naming the key when it is wrong."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"params.yaml has no value for '{key}'.")
        node = node[part]
    if kind is int and isinstance(node, bool) or not isinstance(node, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"params.yaml '{key}' must be {names}, got {node!r}.")
    if choices is not None and node not in choices:
        raise UserError(f"params.yaml '{key}' is {node!r}; allowed values are "
                        f"{', '.join(repr(c) for c in choices)}.")
    if minimum is not None and node < minimum:
        raise UserError(f"params.yaml '{key}' must be at least {minimum}, got {node!r}.")
    return node


# --- files ------------------------------------------------------------------------------------

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


def source_digest(*modules: str) -> str:
    """Hash of the given modules' source, so a code change invalidates per-song outputs."""
    h = hashlib.blake2b(digest_size=8)
    for name in modules:
        h.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return h.hexdigest()


# --- the manifest: decode's account of every input file, read by later stages ----------------

MANIFEST_COLUMNS = [("path", "string"), ("id", "string"), ("status", "string"),
                    ("reason", "string"), ("seconds", "float64"), ("sample_rate_in", "int64"),
                    ("channels_in", "int64"), ("frames", "int64"), ("peak_dbfs", "float64"),
                    ("size", "int64"), ("mtime_ns", "int64")]


def read_manifest(path: str | Path) -> list[dict]:
    import pyarrow.parquet as pq  # here, not at the top: the array stages start faster without it
    return pq.ParquetFile(path).read().to_pylist()  # (read_table would import pandas)


def write_manifest(path: str | Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in MANIFEST_COLUMNS])
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)


# --- incremental per-song work ----------------------------------------------------------------

STAMP = ".stamp.json"


def prepare_out_dir(out_dir: Path, stamp: dict) -> bool:
    """Make `out_dir` hold only outputs made with `stamp` (params + code digest): on a mismatch
    every per-song output is removed, so nothing computed with old settings is ever reused.
    Returns whether earlier outputs were kept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out_dir)
    stamp_file = out_dir / STAMP
    old = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
    if old != stamp:
        for f in out_dir.iterdir():
            if f.is_file() and not f.name.startswith("."):
                f.unlink()
        write_json(stamp_file, stamp)
        return False
    return True


def prune(out_dir: Path, keep: set[str], suffix: str) -> int:
    """Remove per-song outputs whose song is gone; return how many were removed."""
    removed = 0
    for f in out_dir.glob(f"*{suffix}"):
        if f.name.startswith("."):
            continue
        if f.name[: -len(suffix)] not in keep:
            f.unlink()
            removed += 1
    return removed


@dataclass(frozen=True)
class SongPool:
    """Where per-song work runs: `local` processes, or a Dask cluster (`address` of its
    scheduler; a LocalCluster of `workers` processes when empty). Results are the same."""
    workers: int = 1
    executor: str = "local"
    address: str = ""

    @classmethod
    def from_params(cls, params: dict) -> "SongPool":
        workers = default_workers(param(params, "preprocess.workers", int, minimum=0))
        executor = param(params, "preprocess.executor", str, choices=EXECUTORS)
        address = param(params, "preprocess.dask_address", (str, type(None))) or ""
        return cls(workers, executor, address.strip())


EXECUTORS = ("local", "dask")


def map_songs(fn: Callable, jobs: list[tuple], pool: SongPool, desc: str) -> list:
    """Run the pure per-song function `fn(*job)` over `jobs` on `pool`, results in job order,
    with a progress bar (quiet when stderr is not a terminal)."""
    if not jobs:
        return []
    bar = dict(total=len(jobs), desc=desc, unit="song", disable=None, leave=False)
    if pool.executor == "dask":
        return _map_dask(fn, jobs, pool, bar)
    if pool.workers <= 1 or len(jobs) == 1:
        return [fn(*job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(max_workers=min(pool.workers, len(jobs))) as executor:
        return list(tqdm(executor.map(fn, *zip(*jobs)), **bar))


def _map_dask(fn: Callable, jobs: list[tuple], pool: SongPool, bar: dict) -> list:
    """The same map on dask.distributed: the given scheduler, or a LocalCluster for this run.
    Workers of a remote cluster need this project importable and the data paths visible."""
    from dask.distributed import Client, LocalCluster, as_completed
    if pool.address:
        try:
            client = Client(pool.address, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise UserError(f"The Dask scheduler at '{pool.address}' (params.yaml "
                            f"'preprocess.dask_address') cannot be reached ({type(err).__name__})."
                            ) from err
        cluster = None
    else:
        import dask
        # fork: the workers start with this process's imports (numpy, soundfile, the stage's
        # module) instead of importing them again; spawn costs ~1 s per stage (bench/flows.py)
        with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
            cluster = LocalCluster(n_workers=min(pool.workers, len(jobs)), threads_per_worker=1,
                                   processes=True, dashboard_address=None, host="127.0.0.1")
        client = Client(cluster)
    try:
        futures = client.map(fn, *zip(*jobs), pure=False)
        with tqdm(**bar) as progress:
            for _ in as_completed(futures):
                progress.update()
        return client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def sync_songs(in_dir: Path, in_suffix: str, out_dir: Path, stamp: dict, fn, extra: tuple,
               pool: SongPool, desc: str) -> list[str]:
    """The incremental per-song pattern shared by the array stages: one output per input song,
    computed only when missing (or made with other params/code), orphans removed.
    Returns the song ids present after the run."""
    ids = sorted(p.name[: -len(in_suffix)] for p in in_dir.glob(f"*{in_suffix}")
                 if not p.name.startswith("."))
    if not ids:
        raise UserError(f"No input songs in '{in_dir}'; run the earlier stages first.")
    prepare_out_dir(out_dir, stamp)
    removed = prune(out_dir, set(ids), ".npy")
    todo = [i for i in ids if not (out_dir / f"{i}.npy").is_file()]
    log.info("%s: %d songs, %d to compute, %d removed", desc, len(ids), len(todo), removed)
    src, dst = in_dir.resolve(), out_dir.resolve()     # absolute: a Dask worker has its own cwd
    map_songs(fn, [(str(src / f"{i}{in_suffix}"), str(dst / f"{i}.npy"), *extra) for i in todo],
              pool, desc)
    return ids


def default_workers(value: int) -> int:
    """`0` means one worker per core."""
    return value if value > 0 else (os.cpu_count() or 1)


# --- command line -----------------------------------------------------------------------------

def cli(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    """Parse args, run `main`, and turn a UserError into its sentence and exit status 1."""
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("RAWTUNE_LOG", "INFO"),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; finished outputs are kept and the next run continues.",
              file=sys.stderr)
        sys.exit(130)


def stage_parser(description: str) -> argparse.ArgumentParser:
    spec = getattr(sys.modules["__main__"], "__spec__", None)   # run as `python -m stages.x`
    parser = argparse.ArgumentParser(prog=f"python -m {spec.name}" if spec else None,
                                     description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=PARAMS_FILE,
                        help="parameter file to read (default: %(default)s)")
    return parser
