"""How close the training step comes to this CPU's matrix-multiply peak.

Measured side by side in one run:
  floor   dense float32 matmul (n x n, n=4096): the most FLOP/s this CPU gives TensorFlow
  ours    the train stage's step for the model shape in params.yaml, fed by the stage's own
          tf.data pipeline over memory-mapped tensors, for a few settings (batch size, XLA,
          mixed bfloat16)
and printed as FLOP/s, the ratio to the floor, and seconds per epoch per minute of audio.

    python bench/train.py                  # params.yaml's model shape (slow: ~31M weights)
    python bench/train.py --batches 8 16 32 --steps 6

With `--corpus DIR` it also runs the real thing: `dvc repro tensors` on that folder of music in a
fresh copy of the project, then the train stage with params.yaml's settings for `--epochs` epochs,
and reports seconds per epoch and how many epochs fit in 20 minutes. Debian's game-music packages
(lincity-ng-data, extremetuxracer-data: about 19 minutes of OGG) are real music to try:

    python bench/train.py --corpus /usr/share/games --epochs 3

With `--checkpoints N` it trains N epochs of the default model on the same songs twice, with
resume checkpoints by time (`train.checkpoint_every_s`) and after every epoch (the old way), and
reports megabytes written per epoch and the share of training time spent saving for both:

    python bench/train.py --checkpoints 30 --only-checkpoints     # on the demo songs

With `--beside` it measures what training costs on a shared machine: the default model's step
time alone, then with a second training of the same model running at the same moment, for the
product's `train.threads` setting and the fixed alternatives, each training in its own process,
with the CPU time each step took (threads that spin while they wait for a core show up there):

    python bench/train.py --beside

The last line is one JSON object of the headline figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages import codebook, config, files, layouts, model as netlib, synth, train  # noqa: E402,E501
from stages.batches import EpochClock, Normaliser, dataset  # noqa: E402
from stages import tensors as tensor_stage  # noqa: E402
from stages.tensor_files import SONG_PARTS, Tensors  # noqa: E402

SONG_SEQS = 16      # sequences per fake song


def matmul_peak(dtype: str, n: int = 4096, reps: int = 5) -> float:
    import tensorflow as tf
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    f = tf.function(lambda a, b: tf.matmul(a, b))
    f(a, b).numpy()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).numpy()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def fake_tensors(folder: Path, n_seq: int, seq_len: int, n_feat: int) -> Tensors:
    """Random blocks made into tensors by the tensors stage's own functions (songs of
    `SONG_SEQS` sequences, one at a time), read back through the songs' memory maps."""
    rng = np.random.default_rng(0)
    fft, out = folder / "fft", Tensors(folder / "processed", "bench")
    fft.mkdir(parents=True)
    songs = [f"{i:04d}" for i in range(-(-n_seq // SONG_SEQS))]
    for song_id in songs:
        np.save(fft / f"{song_id}.npy", rng.standard_normal((SONG_SEQS * seq_len, n_feat),
                                                            np.float32))
        tensor_stage.song_tensors(str(fft / f"{song_id}.npy"),
                                  *(str(out.song_path(song_id, p)) for p in SONG_PARTS), seq_len)
    cfg = tensor_stage.TensorsConfig(max_seq_len=seq_len, val_fraction=0.0, split_seed=0,
                                     var_floor=0.0)
    tensor_stage.write_tensors(fft, out, songs, songs, cfg, n_feat)    # val: the same songs
    return out


def fake_codes(folder: Path, tensors: Tensors, n_codes: int) -> codebook.Codes:
    """Random codes of the tensors' sequences in the codebook stage's layout (the default
    family's input)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for part in ("x", "y", "val_x", "val_y"):
        np.save(folder / f"{part}.npy", rng.integers(0, n_codes, tensors.read(part).shape[:2])
                .astype(np.int16))
    files.write_json(folder / "codebook.json", dict(family="codebook", codes=n_codes,
                                                    digest="bench"))
    return codebook.Codes(folder).check()


def step_time(cfg: netlib.ModelConfig, tensors: Tensors, batch: int, steps: int,
              codes: codebook.Codes | None = None) -> float:
    """Median seconds per training step after a warm-up epoch, fed by the stage's pipeline
    (from the `codes` for the codebook family)."""
    import keras
    keras.utils.set_random_seed(0)
    data = codes if cfg.family == "codebook" else tensors
    seq_len, n_feat = data.shape()
    model = netlib.build_model(cfg, seq_len, n_feat)
    netlib.compile_model(model, cfg)
    norm = Normaliser.load(tensors)
    clock = EpochClock()
    ds = dataset(data, "", batch, norm, clock, 0).take(steps)

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            self.times.append(time.perf_counter() - self.t)

    timer = Timer()
    timer.times = []
    model.fit(ds, epochs=1, verbose=0, shuffle=False)            # trace + warm up
    timer.times = []
    model.fit(ds, epochs=2, verbose=0, shuffle=False, callbacks=[timer])
    keras.backend.clear_session()
    return float(np.median(timer.times))


def real_corpus(corpus: Path, epochs: int, tmp: Path, updates: dict | None = None) -> dict:
    """`dvc repro tensors` on the corpus, then the train stage for `epochs` epochs, in a fresh
    git + DVC copy of the project (params.yaml with `updates`); returns the stage's own timing
    figures."""
    sys.path.insert(0, str(ROOT / "bench"))
    from preprocess import ENV, corpus_project  # the preprocessing benchmark's project copy
    params = config.load_params(ROOT / "params.yaml")
    project = corpus_project(tmp / "project", corpus, config.audio_setting(params, "block_size"),
                             {"train.epochs": epochs, "train.patience": 0, **(updates or {})})
    t = time.perf_counter()
    subprocess.run(["dvc", "repro", "tensors"], cwd=project, env=ENV, check=True,
                   capture_output=True)
    prep_s = time.perf_counter() - t
    env = dict(ENV, MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    env.pop("RAWTUNE_LOG", None)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.train"], cwd=project, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    train_wall_s = time.perf_counter() - t            # start-up, checkpoints, MLflow included
    m = json.loads((project / "metrics/train.json").read_text())
    summary = json.loads((project / "metrics/preprocess.json").read_text())
    with open(project / "metrics/train_history.csv") as f:
        rows = list(__import__("csv").DictReader(f))
    later = [float(r["seconds"]) for r in rows[1:]] or [float(rows[0]["seconds"])]
    epoch_s = float(np.median(later))                      # the first epoch includes tracing
    minutes = summary["minutes"]
    return dict(corpus_minutes=minutes, sequences_train=m["sequences_train"],
                preprocess_s=round(prep_s, 1), epochs=len(rows),
                train_wall_s=round(train_wall_s, 1), epoch_s=round(epoch_s, 2),
                epoch_s_per_audio_minute=round(epoch_s / minutes, 3),
                epochs_in_20_min=round(1200 / epoch_s, 1),
                epochs_in_20_min_for_20_min_audio=round(1200 / (epoch_s / minutes * 20), 1),
                gflops=m["gflops_per_second"], val_loss=m["val_loss"],
                ratio_to_best_baseline=m["ratio_to_best_baseline"],
                saving_share=m["saving_share"], saving_s=m["saving_seconds"],
                mb_written_per_epoch=round(m["bytes_written_per_epoch"] / 1e6, 1))


def checkpoint_cost(corpus: Path | None, epochs: int, tmp: Path) -> dict:
    """The train stage on the same songs twice, side by side: checkpoints by time
    (params.yaml's `train.checkpoint_every_s`) and after every epoch (the old way)."""
    if corpus is None:                                   # the demo songs, made here
        params = config.load_params(ROOT / "params.yaml")
        synth.write_demo(tmp / "demo", params["demo"]["songs"], params["demo"]["min_seconds"],
                         params["demo"]["max_seconds"], params["demo"]["seed"],
                         params["demo"]["bpm"] or None)
        corpus = tmp / "demo"
    ours = real_corpus(corpus, epochs, tmp / "by_time")
    every = real_corpus(corpus, epochs, tmp / "every_epoch", {"train.checkpoint_every_s": 0})
    row = dict(epochs=epochs, epoch_s=ours["epoch_s"],
               ours_saving_share=ours["saving_share"],
               ours_mb_per_epoch=ours["mb_written_per_epoch"],
               every_epoch_saving_share=every["saving_share"],
               every_epoch_mb_per_epoch=every["mb_written_per_epoch"],
               bytes_ratio=round(ours["mb_written_per_epoch"]
                                 / max(every["mb_written_per_epoch"], 1e-9), 3))
    print(f"checkpoints over {epochs} epochs of {ours['epoch_s']} s: by time "
          f"{row['ours_mb_per_epoch']} MB/epoch, {row['ours_saving_share']:.1%} of training "
          f"time; every epoch {row['every_epoch_mb_per_epoch']} MB/epoch, "
          f"{row['every_epoch_saving_share']:.1%} ({row['bytes_ratio']:.3f}x the bytes)")
    return row


# --- a shared machine ----------------------------------------------------------------------------

def step_worker(params_path: str, threads: int, steps: int, barrier: Path, n_ready: int) -> None:
    """One training for --beside: the default model on random data with `threads` as
    train.threads; waits until `n_ready` workers are warmed up, then prints one JSON line: the
    median wall seconds and the CPU seconds per step."""
    params = config.load_params(params_path)
    used = train.configure_threads(threads)
    cfg = netlib.ModelConfig.from_params(params)
    seq_len = config.param(params, "tensors.max_seq_len", int)
    batch = train.TrainConfig.from_params(params).batch_size
    rng = np.random.default_rng(os.getpid())
    if cfg.family == "codebook":
        n_in = config.param(params, "codebook.codes", int)
        x, y = (rng.integers(0, n_in, (batch, seq_len)).astype(np.int32) for _ in range(2))
    else:
        audio = config.AudioConfig.from_params(params)
        n_in = layouts.n_features(audio.block_size, audio.layout)
        x, y = (rng.standard_normal((batch, seq_len, n_in), np.float32) for _ in range(2))
    model = netlib.build_model(cfg, seq_len, n_in)
    netlib.compile_model(model, cfg)
    for _ in range(2):
        model.train_on_batch(x, y)                              # trace, warm up
    (barrier / f"{os.getpid()}.ready").touch()
    while len(list(barrier.glob("*.ready"))) < n_ready:
        time.sleep(0.05)
    walls, cpu0 = [], time.process_time()
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        walls.append(time.perf_counter() - t)
    print(json.dumps(dict(step_s=float(np.median(walls)),
                          cpu_per_step=(time.process_time() - cpu0) / steps, threads=used)),
          flush=True)


def side_by_side(params_path: str, threads: int, steps: int, n: int) -> list[dict]:
    """`n` step workers started together; their results."""
    with tempfile.TemporaryDirectory() as barrier:
        procs = [subprocess.Popen([sys.executable, __file__, "--step-worker", str(threads),
                                   "--params", params_path, "--steps", str(steps),
                                   "--barrier", barrier, "--n-ready", str(n)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for _ in range(n)]
        outs = [p.communicate()[0] for p in procs]
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def beside(params_path: str, steps: int) -> dict:
    """Step time alone and beside a second training, for train.threads as params.yaml has it
    and for 1 and 2 threads."""
    default = config.param(config.load_params(params_path), "train.threads", int)
    rows = []
    for threads in dict.fromkeys([default, 2, 1]):
        alone = side_by_side(params_path, threads, steps, 1)[0]
        pair = side_by_side(params_path, threads, steps, 2)
        both = float(np.mean([r["step_s"] for r in pair]))
        row = dict(threads=threads, used_alone=alone["threads"],
                   used_beside=[r["threads"] for r in pair], alone_s=round(alone["step_s"], 3),
                   beside_s=round(both, 3), ratio=round(both / alone["step_s"], 2),
                   cpu_alone_s=round(alone["cpu_per_step"], 3),
                   cpu_beside_s=round(float(np.mean([r["cpu_per_step"] for r in pair])), 3))
        rows.append(row)
        print(f"train.threads {threads} ({'params.yaml' if threads == default else 'fixed'}): "
              f"alone {row['alone_s']:.3f} s/step ({row['used_alone']} thread(s), CPU "
              f"{row['cpu_alone_s']:.3f} s); beside a second training {row['beside_s']:.3f} s/step "
              f"({row['used_beside']} thread(s), CPU {row['cpu_beside_s']:.3f} s): "
              f"{row['ratio']:.2f}x", flush=True)
    return dict(beside=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting and epoch")
    parser.add_argument("--quick", action="store_true", help="only the params.yaml setting")
    parser.add_argument("--corpus", type=Path, help="also train on this folder of real music")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the --corpus run")
    parser.add_argument("--checkpoints", type=int, metavar="EPOCHS", default=0,
                        help="also train EPOCHS epochs on the --corpus (default: the demo songs) "
                             "with checkpoints by time and after every epoch, side by side")
    parser.add_argument("--only-checkpoints", action="store_true",
                        help="skip the step timings (with --checkpoints)")
    parser.add_argument("--beside", action="store_true", help="only the step time alone and "
                        "beside a second training (a shared machine)")
    parser.add_argument("--step-worker", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    parser.add_argument("--barrier", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n-ready", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_worker is not None:
        return step_worker(args.params, args.step_worker, args.steps, args.barrier, args.n_ready)
    if args.beside:
        print(json.dumps(beside(args.params, max(args.steps, 10))))
        return
    if args.checkpoints and args.only_checkpoints:
        with tempfile.TemporaryDirectory() as tmp:
            row = checkpoint_cost(args.corpus, args.checkpoints, Path(tmp))
        print(json.dumps(dict(checkpoints=row)))
        return

    netlib.import_keras()
    params = config.load_params(args.params)
    base = netlib.ModelConfig.from_params(params)
    audio = config.AudioConfig.from_params(params)
    block, rate = audio.block_size, audio.sample_rate
    n_feat = layouts.n_features(block, audio.layout)
    n_codes = config.param(params, "codebook.codes", int)
    n_in = n_codes if base.family == "codebook" else n_feat      # what the network reads
    seq_len = config.param(params, "tensors.max_seq_len", int)
    default_batch = train.TrainConfig.from_params(params).batch_size
    seq_per_minute = 60 * rate / audio.hop / seq_len

    peak32, peak16 = matmul_peak("float32"), matmul_peak("bfloat16")
    print(f"floor: float32 matmul {peak32:.0f} GFLOP/s, bfloat16 matmul {peak16:.0f} GFLOP/s")
    settings = [(default_batch, base)]
    if not args.quick:
        settings += [(b, base) for b in args.batches if b != default_batch]
        settings += [(default_batch, netlib.ModelConfig(**{**base.as_dict(), "jit_compile": True})),
                     (default_batch, netlib.ModelConfig(**{**base.as_dict(),
                                                          "precision": "mixed_bfloat16"}))]
    flops_seq = netlib.flops_per_sequence(base, seq_len, n_in)
    print(f"model: {base.family}, {base.cell} hidden {base.hidden} x {base.layers}, {seq_len} x "
          f"{n_in} per sequence, {flops_seq / 1e9:.2f} GFLOP per sequence per step")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tensors = fake_tensors(Path(tmp), max(b for b, _ in settings) * args.steps, seq_len,
                               n_feat)
        codes = fake_codes(Path(tmp) / "codebook", tensors, n_codes)
        for batch, cfg in settings:
            t = step_time(cfg, tensors, batch, args.steps, codes)
            gflops = flops_seq * batch / t / 1e9
            per_min = t / batch * seq_per_minute
            row = dict(batch=batch, precision=cfg.precision, jit=cfg.jit_compile,
                       step_s=round(t, 3), gflops=round(gflops, 1),
                       ratio_to_peak=round(gflops / peak32, 3),
                       epoch_s_per_audio_minute=round(per_min, 2))
            rows.append(row)
            print(f"batch {batch:3d} {cfg.precision:15s} jit={str(cfg.jit_compile):5s} "
                  f"{t * 1000:7.0f} ms/step  {gflops:6.1f} GFLOP/s  {gflops / peak32:5.1%} of "
                  f"float32 peak  {per_min:5.2f} s/epoch per minute of audio")
    ours = rows[0]
    epochs_20 = 20 * 60 / (ours["epoch_s_per_audio_minute"] * 20)
    print(f"params.yaml setting: 20 minutes of audio -> {ours['epoch_s_per_audio_minute'] * 20:.0f}"
          f" s per epoch, {epochs_20:.0f} epochs in 20 minutes")
    real = None
    if args.corpus:
        with tempfile.TemporaryDirectory() as tmp:
            real = real_corpus(args.corpus, args.epochs, Path(tmp))
        print(f"real music: {real['corpus_minutes']} min, {real['sequences_train']} training "
              f"sequences, {real['epoch_s']} s per epoch ({real['gflops']} GFLOP/s) -> "
              f"{real['epochs_in_20_min']} epochs in 20 minutes "
              f"({real['epochs_in_20_min_for_20_min_audio']} for exactly 20 minutes of audio); "
              f"the whole stage ran {real['epochs']} epochs in {real['train_wall_s']:.0f} s")
    checkpoints = None
    if args.checkpoints:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoints = checkpoint_cost(args.corpus, args.checkpoints, Path(tmp))
    print(json.dumps(dict(matmul_peak_gflops=round(peak32, 1),
                          matmul_peak_bf16_gflops=round(peak16, 1),
                          train_gflops=ours["gflops"], ratio_to_peak=ours["ratio_to_peak"],
                          epoch_s_per_audio_minute=ours["epoch_s_per_audio_minute"],
                          epochs_in_20_min_for_20_min_audio=round(epochs_20, 1),
                          settings=rows, real_corpus=real, checkpoints=checkpoints)))


if __name__ == "__main__":
    main()
