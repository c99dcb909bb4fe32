"""What the whole pipeline makes of a folder of real music: ours against a config faithful to the
seed (fft: full, no normalisation, 1 seed block), each run end to end with `dvc repro` in a fresh
copy of the project, with the same epochs budget, then judged by the evaluate stage.

    python bench/quality.py --corpus /path/to/music --epochs 100 --seed-epochs 50

Prints each run's training time, val_loss against the baselines, and the evaluate figures beside
the real/noise calibration. The last line is one JSON object of the headline figures.
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
from preprocess import ENV, corpus_project  # noqa: E402  the project copy of the other benchmark

CONFIGS = {
    "ours": {},
    "seed": {"fft_blocks.fft": "full", "train.normalise": False, "generate.seed_blocks": 1},
}
KEYS = ("verdict", "level_vs_train_db", "dynamics_db", "tonal_fraction", "clicks", "fd_frames",
        "fd_texture", "copy_score", "flatness")


def run_config(name: str, corpus: Path, epochs: int, tmp: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    project = corpus_project(tmp / name, corpus, params["fft_blocks"]["block_size"],
                             {**CONFIGS[name], "train.epochs": epochs})
    env = dict(ENV)
    env.pop("MLFLOW_TRACKING_URI", None)
    t = time.perf_counter()
    proc = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{name}: dvc repro failed:\n{proc.stderr[-3000:]}")
    train = json.loads((project / "metrics/train.json").read_text())
    ev = json.loads((project / "metrics/eval.json").read_text())
    songs = [{k: s.get(k) for k in KEYS} for s in ev["songs"]]
    return dict(config=name, pipeline_s=round(wall, 1), epochs_run=train["epochs_run"],
                val_loss=train["val_loss"], ratio_to_best_baseline=train["ratio_to_best_baseline"],
                calibration=ev["calibration"], songs=songs,
                mean={k: ev.get(f"mean_{k}") for k in ("fd_frames", "fd_texture", "dynamics_db",
                                                       "clicks", "tonal_fraction", "rms_dbfs")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a folder of real music")
    parser.add_argument("--epochs", type=int, default=100, help="epochs for our config")
    parser.add_argument("--seed-epochs", type=int, default=50,
                        help="epochs for the seed's config (its features are twice as many)")
    parser.add_argument("--only", choices=sorted(CONFIGS), help="run one config")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ([args.only] if args.only else ["ours", "seed"]):
            r = run_config(name, args.corpus, args.epochs if name == "ours" else args.seed_epochs,
                           Path(tmp))
            results.append(r)
            c = r["calibration"]
            print(f"{name}: {r['pipeline_s']:.0f} s, {r['epochs_run']} epochs, val_loss "
                  f"{r['val_loss']:.4g} ({r['ratio_to_best_baseline']:.3f} x best baseline); "
                  f"frame FD {r['mean']['fd_frames']} (real {c['fd_frames_real']}, noise "
                  f"{c['fd_frames_noise']}), texture FD {r['mean']['fd_texture']} (real "
                  f"{c['fd_texture_real']}, noise {c['fd_texture_noise']}), dynamics "
                  f"{r['mean']['dynamics_db']} dB (real {c['dynamics_real']}), clicks "
                  f"{r['mean']['clicks']} (real {c['clicks_real']}), tonal "
                  f"{r['mean']['tonal_fraction']} (real {c['tonal_real']})", flush=True)
            for s in r["songs"]:
                print("   ", s, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
