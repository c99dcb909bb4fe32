"""What the Prefect flow and the Dask executor cost, each side by side with the plain way in one run.

1. Flow overhead: the demo songs through every stage, once with `dvc repro` and once with
   `python -m flows.pipeline`, each in its own fresh copy of the project (train.epochs kept small
   so the difference is not lost in training noise), then both again when everything is up to
   date. Prefect's bare start-up (one empty flow) is timed in the same run for reference.
2. Per-song scale-out (with --corpus): decode + wav_to_npy + fft_blocks of a real folder with
   `preprocess.executor: local` (process pool) and `dask` (a LocalCluster of as many workers).

    python bench/flows.py                                  # 1 only
    python bench/flows.py --corpus /path/to/music          # 1 and 2
    python bench/flows.py --skip-flow --corpus DIR --scale 4   # 2 on 4x the corpus

The last line is one JSON object of the figures.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from preprocess import ENV, corpus_project, demo_corpus, scaled_copy  # noqa: E402

TARGETS = dict(flow_overhead_s="<= Prefect's start-up (~10 s)", dask_vs_local="<= 1.2")
EMPTY_FLOW = ("import os; os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'] = 'false'\n"
              "from prefect import flow\n@flow\ndef empty():\n    return 1\nempty()")


def timed(cmd: list[str], cwd: Path, log: Path) -> float:
    env = dict(ENV)
    env.pop("MLFLOW_TRACKING_URI", None)
    t = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed; its output:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t


def flow_overhead(tmp: Path, epochs: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    corpus = demo_corpus(tmp / "demo", params["demo"]["songs"], params["demo"])
    ways = {"dvc": ["dvc", "repro"],
            "flow": [sys.executable, "-m", "flows.pipeline", "--project"]}
    out = {"prefect_startup_s": timed([sys.executable, "-c", EMPTY_FLOW], ROOT, tmp / "empty.log")}
    for way, cmd in ways.items():
        project = corpus_project(tmp / way, corpus, params["fft_blocks"]["block_size"],
                                 {"train.epochs": epochs})
        full = cmd + [str(project)] if way == "flow" else cmd
        cwd = ROOT if way == "flow" else project
        out[f"{way}_s"] = timed(full, cwd, tmp / f"{way}.log")
        out[f"{way}_noop_s"] = timed(full, cwd, tmp / f"{way}-noop.log")
        print(f"{way:5s}: all stages {out[f'{way}_s']:6.1f} s, up to date {out[f'{way}_noop_s']:5.1f} s",
              flush=True)
    out["flow_overhead_s"] = out["flow_s"] - out["dvc_s"]
    out["flow_noop_overhead_s"] = out["flow_noop_s"] - out["dvc_noop_s"]
    print(f"Prefect's own start-up (one empty flow): {out['prefect_startup_s']:.1f} s")
    print(f"flow overhead: {out['flow_overhead_s']:+.1f} s on a full run, "
          f"{out['flow_noop_overhead_s']:+.1f} s when everything is up to date", flush=True)
    return out


def dask_vs_local(tmp: Path, corpus: Path, workers: int) -> dict:
    """local pool; dask with a LocalCluster started by each stage (no address); dask sent to a
    LocalCluster of `workers` processes started once for the run (its start-up counted)."""
    sys.path.insert(0, str(ROOT))                         # the cluster's workers import stages/
    from dask.distributed import LocalCluster
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {}
    for way in ("local", "dask_per_stage", "dask_cluster"):
        cluster, t0 = None, time.perf_counter()
        if way == "dask_cluster":
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, host="127.0.0.1")
        start_s = time.perf_counter() - t0
        executor = {"preprocess.executor": "local" if way == "local" else "dask",
                    "preprocess.workers": workers,
                    "preprocess.dask_address": cluster.scheduler_address if cluster else ""}
        try:
            project = corpus_project(tmp / f"pre-{way}", corpus, params["fft_blocks"]["block_size"],
                                     executor)
            out[f"{way}_s"] = start_s + timed(["dvc", "repro", "fft_blocks"], project,
                                              tmp / f"pre-{way}.log")
        finally:
            if cluster is not None:
                cluster.close()
        print(f"{way:15s}: decode + wav_to_npy + fft_blocks {out[f'{way}_s']:6.1f} s"
              + (f" (cluster start-up {start_s:.1f} s included)" if cluster else ""), flush=True)
    for way in ("dask_per_stage", "dask_cluster"):
        out[f"{way}_vs_local"] = out[f"{way}_s"] / out["local_s"]
        print(f"{way} / local = {out[f'{way}_vs_local']:.2f} (target {TARGETS['dask_vs_local']})")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="train.epochs of part 1 (default 3)")
    parser.add_argument("--corpus", type=Path, help="a folder of real music for part 2")
    parser.add_argument("--workers", type=int, default=2, help="workers of both executors")
    parser.add_argument("--skip-flow", action="store_true", help="run part 2 only")
    parser.add_argument("--scale", type=int, default=1,
                        help="part 2 on this many copies of each corpus song (re-encoded at a "
                             "slightly lower gain, so none is a duplicate); default 1")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.corpus is not None and not args.corpus.is_dir():
        raise SystemExit(f"error: --corpus {args.corpus} is not a folder.")
    with tempfile.TemporaryDirectory(prefix="bench-flows-") as tmp:
        result = {} if args.skip_flow else flow_overhead(Path(tmp), args.epochs)
        if args.corpus is not None:
            corpus = args.corpus if args.scale <= 1 else scaled_copy(
                args.corpus, Path(tmp) / f"corpus-x{args.scale}", args.scale)
            result.update(dask_vs_local(Path(tmp), corpus, args.workers))
    print(json.dumps({k: round(v, 2) for k, v in result.items()}))


if __name__ == "__main__":
    main()
