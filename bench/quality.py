"""What the whole pipeline makes of folders of real music, config by config: params.yaml as it
stands (the default), the seed's own config, the block-FFT default before frames (rfft), and the
other model families on frames (Laplace, and the deterministic L1 control). Each runs end to end
with `dvc repro` in a fresh copy of the project with a training time budget (`train.max_minutes`),
then the evaluate stage judges its songs beside the real and noise calibration.

    python bench/quality.py --corpus /music/album-a --corpus /music/album-b --minutes 20

Prints, per corpus, one table row per config (training time and epochs, val_loss against the best
trivial predictor, generation real-time factor, every evaluate figure, the verdicts) and the
calibration; the last line is one JSON object of everything.
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

BLOCKS = {"decode.sample_rate": 44100, "fft_blocks.fft": "rfft", "fft_blocks.block_size": 11025,
          "tensors.max_seq_len": 40, "train.family": "regression", "train.loss": "mse",
          "train.optimizer": "rmsprop", "train.learning_rate": 0.002, "train.batch_size": 16,
          "train.normalise": True, "generate.temperature": 0.0, "generate.seed_blocks": 8,
          "generate.match_dynamics": 0, "generate.match_tonal": 0,
          "generate.min_dynamics_db": 0, "generate.min_tonal": 0,
          "generate.min_copy": 0}                                     # the seed's way: as drawn
FRAMES = {"decode.sample_rate": 22050, "fft_blocks.fft": "frames", "fft_blocks.block_size": 2048,
          "fft_blocks.hop": 512, "tensors.max_seq_len": 128, "train.optimizer": "adam",
          "train.learning_rate": 0.001, "train.batch_size": 32, "train.normalise": True,
          "generate.seed_blocks": 64}
CONFIGS = {
    "default": {},                                                   # params.yaml as it stands
    "seed": {**BLOCKS, "fft_blocks.fft": "full", "train.normalise": False,
             "generate.seed_blocks": 1},
    "rfft": BLOCKS,
    "laplace": {**FRAMES, "train.family": "laplace", "generate.temperature": 0.5},
    "l1": {**FRAMES, "train.family": "regression", "train.loss": "mae",
           "generate.temperature": 0.0},
}
FIGURES = ("level_vs_train_db", "dynamics_db", "tonal_fraction", "clicks", "fd_frames",
           "fd_texture", "fd_frames_vs_source", "fd_texture_vs_source", "dynamics_db_vs_source",
           "dynamics_db_vs_source_body", "tonal_fraction_vs_source", "copy_score",
           "replayed_longest_s", "replayed_share", "loop_score", "nearest_song_fd",
           "sharpened", "dynamics_stretch")
SHORT = dict(level_vs_train_db="level dB", dynamics_db="dyn dB", tonal_fraction="tonal",
             clicks="clicks", fd_frames="FD frames", fd_texture="FD texture",
             fd_frames_vs_source="FD frames / source's",
             fd_texture_vs_source="FD texture / source's",
             dynamics_db_vs_source="dyn dB - source's",
             dynamics_db_vs_source_body="dyn dB - source's median window",
             tonal_fraction_vs_source="tonal / source's",
             copy_score="copy", replayed_longest_s="replayed s", replayed_share="replayed share",
             loop_score="loop", nearest_song_fd="nearest song",
             sharpened="sharpened a", dynamics_stretch="spread k")    # generate's match step


# each new song's source judged through its whole length (evaluate's windows as long as a song)
SOURCE_BODY = ("grows_from_windows", "grows_from_dynamics_db_median", "grows_from_tonal_median",
               "grows_from_static_windows", "grows_from_smear_windows",
               "fails_like_its_source")


def run_config(name: str, corpus: Path, minutes: float, tmp: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    updates = {**CONFIGS[name], "train.max_minutes": minutes, "train.epochs": 100_000}
    block = updates.get("fft_blocks.block_size", params["fft_blocks"]["block_size"])
    project = corpus_project(tmp / f"{corpus.name}-{name}", corpus, block, updates)
    env = dict(ENV)
    env.pop("MLFLOW_TRACKING_URI", None)
    t = time.perf_counter()
    proc = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return dict(config=name, error=proc.stderr.strip().splitlines()[-1][:300])
    read = lambda f: json.loads((project / "metrics" / f).read_text())  # noqa: E731
    train, made, ev = read("train.json"), read("generate.json"), read("eval.json")
    made_of = {s["file"]: s for s in made.get("songs", [])}   # what generate did to each song
    used = yaml.safe_load((project / "params.yaml").read_text())
    return dict(config=name, family=used["train"]["family"], layout=used["fft_blocks"]["fft"],
                pipeline_s=round(wall, 1),
                train_minutes=round(train["seconds_per_epoch"] * train["epochs_run"] / 60, 1),
                budget_minutes=minutes, epochs_run=train["epochs_run"], stopped=train["stopped"],
                val_loss=train["val_loss"], ratio_to_best_baseline=train["ratio_to_best_baseline"],
                generate_rtf=made["realtime_factor"], calibration=ev["calibration"],
                songs=[{k: {**made_of.get(s["file"], {}), **s}.get(k)
                        for k in ("verdict", "reason", "grows_from", "grows_from_verdict",
                                  *SOURCE_BODY, *FIGURES)}
                       for s in ev["songs"]],
                verdicts=ev["verdicts"], real_verdicts=ev.get("real_verdicts", {}),
                real_songs=ev.get("real_songs", []))


# the per-song bars every new song must clear (the issue "Music, not a smear"), beside its verdict
BARS = dict(dynamics_db=8.0, tonal_vs_real=0.6, copy_score=0.7, fd_vs_real=1.5)


def bars(songs: list[dict], calibration: dict) -> dict:
    """How many songs clear each per-song bar, and how many clear them all."""
    c, b = calibration, BARS
    checks = {
        "ok": lambda s: s["verdict"] == "ok",
        f"dynamics >= {b['dynamics_db']:g} dB": lambda s: s["dynamics_db"] >= b["dynamics_db"],
        f"tonal >= {b['tonal_vs_real']:g}x real": lambda s: (
            s["tonal_fraction"] >= b["tonal_vs_real"] * c["tonal_real"]),
        f"copy >= {b['copy_score']:g}": lambda s: (s.get("copy_score") is None
                                                   or s["copy_score"] >= b["copy_score"]),
        f"FD frames <= {b['fd_vs_real']:g}x real": lambda s: (
            s["fd_frames"] <= b["fd_vs_real"] * c["fd_frames_real"]),
        f"FD texture <= {b['fd_vs_real']:g}x real": lambda s: (
            s["fd_texture"] <= b["fd_vs_real"] * c["fd_texture_real"]),
    }
    counts = {name: sum(map(check, songs)) for name, check in checks.items()}
    counts["all"] = sum(all(check(s) for check in checks.values()) for s in songs)
    return counts


def bars_lines(results: list[dict]) -> str:
    """A line per config, then the real songs of the first config that has them (their first
    stretch as long as a new song, judged by the same evaluate; a training song has no copy
    score): how often the user's own music clears the same bars."""
    def say(label: str, songs: list[dict], calibration: dict) -> str:
        return f"{label}: of {len(songs)} songs, " + ", ".join(
            f"{name} {n}" for name, n in bars(songs, calibration).items())

    lines = [say(r["config"], r["songs"], r["calibration"]) for r in results if "error" not in r]
    real = next((r for r in results if r.get("real_songs")), None)
    if real is not None:
        lines.append(say("the real songs", real["real_songs"], real["calibration"]))
    return "\n".join(lines)


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def table(results: list[dict]) -> str:
    """One markdown row per config: the mean of each figure over its songs, and the verdicts."""
    head = ["config", "family/layout", "train min (epochs)", "val/best baseline", "gen RTF",
            *(SHORT[k] for k in FIGURES), "verdicts", "their sources' verdicts",
            "failing as their sources' typical windows do"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['config']} | failed: {r['error']} |")
            continue
        means = []
        for k in FIGURES:
            values = [s[k] for s in r["songs"] if isinstance(s.get(k), (int, float))]
            means.append(fmt(sum(values) / len(values) if values else None))
        verdicts = ", ".join(f"{n} {v}" for v, n in sorted(r["verdicts"].items()))
        names = [s["grows_from_verdict"] for s in r["songs"] if s.get("grows_from_verdict")]
        sources = ", ".join(f"{names.count(v)} {v}" for v in sorted(set(names))) or "-"
        failed = [s for s in r["songs"] if s["verdict"] != "ok"]
        alike = sum(bool(s.get("fails_like_its_source")) for s in failed)
        rows.append("| " + " | ".join([
            r["config"], f"{r['family']}/{r['layout']}",
            f"{r['train_minutes']} of {r['budget_minutes']:g} ({r['epochs_run']})",
            fmt(r["ratio_to_best_baseline"]), fmt(r["generate_rtf"]), *means,
            verdicts, sources, f"{alike} of {len(failed)}"]) + " |")
    return "\n".join(rows)


def calibration_line(results: list[dict]) -> str:
    c = next((r["calibration"] for r in results if "calibration" in r), None)
    if c is None:
        return "calibration: none (every config failed)"
    return (f"real songs: frame FD {c['fd_frames_real']:.1f} (noise {c['fd_frames_noise']:.1f}), "
            f"texture FD {c['fd_texture_real']:.1f} (noise {c['fd_texture_noise']:.1f}), dynamics "
            f"{c['dynamics_real']:.1f} dB, tonal {c['tonal_real']:.3f}, clicks "
            f"{c['clicks_real']:.2f}, loop score >= {c.get('loop_real_min', float('nan')):.2f}, "
            f"closest two real songs FD {c.get('songs_apart_real', float('nan')):.1f}; the real "
            "songs judged the same way: " + ", ".join(
                f"{n} {v}" for v, n in sorted(next(r.get("real_verdicts", {}) for r in results
                                                   if "calibration" in r).items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, action="append", required=True,
                        help="a folder of real music (give it twice for two corpora)")
    parser.add_argument("--minutes", type=float, default=20,
                        help="training budget of the default config (train.max_minutes)")
    parser.add_argument("--other-minutes", type=float, default=None,
                        help="training budget of the other configs (default: --minutes)")
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append",
                        help="run these configs only")
    parser.add_argument("--keep", type=Path, default=None,
                        help="make the projects in this new folder and keep them (their songs, "
                             "spectrograms and MLflow runs); default: a temporary folder")
    args = parser.parse_args()
    everything = {}
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists already; name a new folder.")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        for corpus in args.corpus:
            results = []
            for name in args.only or list(CONFIGS):
                minutes = args.minutes if name == "default" else (args.other_minutes or args.minutes)
                results.append(run_config(name, corpus.resolve(), minutes, Path(tmp)))
                print(f"{corpus.name} {name}: {json.dumps(results[-1])}", flush=True)
            everything[str(corpus)] = results
            print(f"\n{corpus}\n{table(results)}\n{calibration_line(results)}\n"
                  f"the issue's per-song bars:\n{bars_lines(results)}\n", flush=True)
    print(json.dumps(everything))


if __name__ == "__main__":
    main()
