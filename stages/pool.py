"""Per-song work: a pure function mapped over songs on a process pool here or on Dask, and the
incremental pattern of the array stages (one or a few outputs per input song, computed only when
missing or made with other settings, orphans removed).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from stages.config import UserError, param, usable_cores
from stages.files import STAMP, read_stamp, remove_stale_tmp, write_json

log = logging.getLogger("rawtune")


def source_digest(*modules: str) -> str:
    """Hash of the given modules' source, so a code change invalidates per-song outputs."""
    h = hashlib.blake2b(digest_size=8)
    for name in modules:
        h.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return h.hexdigest()


# --- incremental per-song work ----------------------------------------------------------------

def prepare_out_dir(out_dir: Path, stamp: dict) -> bool:
    """Make `out_dir` hold only outputs made with `stamp` (params + code digest): on a mismatch
    every per-song output is removed, so nothing computed with old settings is ever reused.
    Returns whether earlier outputs were kept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out_dir)
    if read_stamp(out_dir) != stamp:
        for f in out_dir.iterdir():
            if f.is_file() and not f.name.startswith("."):
                f.unlink()
        write_json(out_dir / STAMP, stamp)
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
    timeout_s: float = 30.0

    @classmethod
    def from_params(cls, params: dict) -> "SongPool":
        workers = default_workers(param(params, "preprocess.workers", int, minimum=0))
        executor = param(params, "preprocess.executor", str, choices=EXECUTORS)
        address = param(params, "preprocess.dask_address", (str, type(None))) or ""
        timeout_s = param(params, "preprocess.dask_timeout_s", (int, float), minimum=1)
        return cls(workers, executor, address.strip(), float(timeout_s))


EXECUTORS = ("local", "dask")


def map_songs(fn: Callable, jobs: list[tuple], pool: SongPool, desc: str) -> list:
    """Run the pure per-song function `fn(*job)` over `jobs` on `pool`, results in job order,
    with a progress bar (quiet when stderr is not a terminal). Each job's first item is its input
    file: the largest start first, so the run does not end with one core finishing a long song
    while the others wait."""
    if not jobs:
        return []
    order = sorted(range(len(jobs)), key=lambda k: -_size(jobs[k][0]))
    results = _map([jobs[k] for k in order], fn, pool, desc)
    in_job_order = [None] * len(jobs)
    for k, result in zip(order, results):
        in_job_order[k] = result
    return in_job_order


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:                                    # gone already: the job will say so
        return 0


def _map(jobs: list[tuple], fn: Callable, pool: SongPool, desc: str) -> list:
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
            client = Client(pool.address, timeout=f"{pool.timeout_s}s")
        except (OSError, TimeoutError) as err:
            raise UserError(f"The Dask scheduler at '{pool.address}' (params.yaml "
                            f"'preprocess.dask_address') cannot be reached within "
                            f"{pool.timeout_s:g} s ({type(err).__name__}); check the address, or "
                            f"raise 'preprocess.dask_timeout_s' for a busy cluster."
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
               pool: SongPool, desc: str, out_suffixes: tuple[str, ...] = (".npy",)) -> list[str]:
    """The incremental per-song pattern shared by the array stages: the outputs
    `<id><suffix>` of each input song, one per suffix in `out_suffixes`, computed only when one
    of them is missing (or they were made with other params/code), orphans removed.
    `fn(src, *dsts, *extra)` gets the song's input and its output paths in suffix order. No
    suffix may end another (".npy" beside "_x.npy" would prune every "<id>_x.npy").
    Returns the song ids present after the run."""
    ids = sorted(p.name[: -len(in_suffix)] for p in in_dir.glob(f"*{in_suffix}")
                 if not p.name.startswith("."))
    if not ids:
        raise UserError(f"No input songs in '{in_dir}'; run the earlier stages first.")
    prepare_out_dir(out_dir, stamp)
    removed = max([prune(out_dir, set(ids), s) for s in out_suffixes])   # songs, not files
    # a song is done only when all its outputs exist (a kill between two leaves it to do again)
    todo = [i for i in ids if not all((out_dir / f"{i}{s}").is_file() for s in out_suffixes)]
    log.info("%s: %d songs, %d to compute, %d removed", desc, len(ids), len(todo), removed)
    src, dst = in_dir.resolve(), out_dir.resolve()     # absolute: a Dask worker has its own cwd
    map_songs(fn, [(str(src / f"{i}{in_suffix}"), *(str(dst / f"{i}{s}") for s in out_suffixes),
                    *extra) for i in todo], pool, desc)
    return ids


def default_workers(value: int) -> int:
    """`0` means one worker per usable core."""
    return value if value > 0 else usable_cores()
