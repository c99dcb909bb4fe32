"""Generation speed: ours (one block per step, recurrent state carried, the closed loop in one
TensorFlow graph) against the seed's way (re-predict the whole growing sequence for each new
block), side by side in one run, at the model shape of params.yaml.

Real-time factor = seconds of audio produced (all `generate.n_songs` songs of one call, made
together as a batch) per wall second, blocks -> samples included. Weights are random: speed does
not depend on them.

    python bench/generate.py                 # 30 s and 60 s ours, 60 s the seed's way
    python bench/generate.py --seed-seconds 0

The last line is one JSON object of the headline figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages import config, generate, layouts, model as netlib  # noqa: E402


def ours(stepper, seed: np.ndarray, n_blocks: int, layout: str, block: int) -> float:
    t = time.perf_counter()
    made = generate.generate_blocks(stepper, seed, n_blocks, 0.0, np.random.default_rng(0))
    for song in made:
        layouts.blocks_to_samples(song, layout, block, 0)
    return time.perf_counter() - t


def seeds_way(model, seed: np.ndarray, n_blocks: int, layout: str, block: int) -> float:
    """The seed's generate_from_seed: predict the whole sequence so far, keep its last block."""
    t = time.perf_counter()
    seq = seed
    for _ in range(n_blocks):
        nxt = model.predict_on_batch(seq)
        seq = np.concatenate([seq, np.asarray(nxt)[:, -1:]], axis=1)
    for song in seq[:, seed.shape[1]:]:
        layouts.blocks_to_samples(song, layout, block, 0)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--seconds", type=float, nargs="+", default=[30, 60])
    parser.add_argument("--seed-seconds", type=float, default=60,
                        help="length for the seed's way (0 skips it)")
    args = parser.parse_args()

    keras = netlib.import_keras()
    params = config.load_params(args.params)
    cfg = netlib.ModelConfig.from_params(params)
    audio = config.AudioConfig.from_params(params)
    block, layout, rate = audio.block_size, audio.layout, audio.sample_rate
    gen = generate.GenerateConfig.from_params(params)
    n_songs, k = gen.n_songs, gen.seed_blocks
    n_feat = layouts.n_features(block, layout)
    keras.utils.set_random_seed(0)
    model = netlib.build_model(cfg, None, n_feat)
    stepper = generate.Stepper(model)
    seed = np.random.default_rng(0).normal(size=(n_songs, k, n_feat)).astype(np.float32) * 0.1
    blocks_for = lambda s: int(np.ceil(s * rate / block))  # noqa: E731

    cold = ours(stepper, seed, blocks_for(args.seconds[0]), layout, block)   # traces the graphs
    print(f"model {cfg.cell} {cfg.hidden} x {cfg.layers}, {n_feat} features, {n_songs} songs per "
          f"call, {k} seed blocks; first call (tracing included) {cold:.2f} s")
    rows = {}
    for s in args.seconds:
        wall = min(ours(stepper, seed, blocks_for(s), layout, block) for _ in range(3))
        rows[s] = dict(seconds=s, wall_s=round(wall, 3), rtf=round(n_songs * s / wall, 1))
        print(f"ours        {s:4.0f} s x {n_songs}: {wall:6.2f} s  ->  {n_songs * s / wall:6.1f}x "
              "real time")
    figures = dict(rtf_30=rows.get(30, {}).get("rtf"), rtf_60=rows.get(60, {}).get("rtf"),
                   cold_first_call_s=round(cold, 2))
    if 30 in rows and 60 in rows:
        figures["cost_60_over_30"] = round(rows[60]["wall_s"] / rows[30]["wall_s"], 2)
        print(f"60 s costs {figures['cost_60_over_30']}x 30 s (linear would be 2.0)")
    if args.seed_seconds > 0:
        model.predict_on_batch(seed)                                      # warm up
        model.predict_on_batch(np.concatenate([seed, seed], axis=1))
        wall = seeds_way(model, seed, blocks_for(args.seed_seconds), layout, block)
        figures["seed_way_s"] = round(wall, 2)
        figures["seed_way_rtf"] = round(n_songs * args.seed_seconds / wall, 2)
        print(f"seed's way  {args.seed_seconds:4.0f} s x {n_songs}: {wall:6.2f} s  ->  "
              f"{figures['seed_way_rtf']:6.2f}x real time")
        ours_same = rows.get(args.seed_seconds, {}).get("wall_s")
        if ours_same:
            figures["speedup_vs_seed"] = round(wall / ours_same, 1)
            print(f"ours is {figures['speedup_vs_seed']}x faster than the seed's way at "
                  f"{args.seed_seconds:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
