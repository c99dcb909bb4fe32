"""Generation speed: ours (one block or frame per step, recurrent state carried, the closed loop in
one TensorFlow graph, sampling included) against the seed's way (re-predict the whole growing
sequence for each new block), side by side in one run, at the model and audio of params.yaml
(`train.family`, `fft_blocks.*`, `generate.*`).

Real-time factor = seconds of audio produced (all `generate.n_songs` songs of one call, made
together as a batch) per wall second, with what `generate` does to make samples: the codebook's
frames and Griffin-Lim phase reconstruction for frames, the inverse FFT for blocks, and
`generate.match_tonal` and `match_dynamics` as if every song had to be a third more tonal and
breathe half as much again as it was drawn (`AsIf`). Weights are random: speed does not depend on
them.

    python bench/generate.py                 # 30 s and 60 s ours, 60 s the seed's way
    python bench/generate.py --seed-seconds 0

The last line is one JSON object of the headline figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages import config, generate, layouts, model as netlib, quality  # noqa: E402


class AsIf:
    """Stands in for generate's `SourceBodies`: every song's source half again as lively and a
    third more tonal than the song, so that every song goes through `generate.match_dynamics`
    and `match_tonal` (on real music about half the songs need one of them, most by less)."""

    def __init__(self, songs: np.ndarray, rate: int):
        self.figures = {str(i): dict(grows_from_tonal_median=1.3 * quality.tonal_fraction(x, rate),
                                     grows_from_dynamics_db_median=1.5 * quality.dynamics_db(x))
                        for i, x in enumerate(songs)}

    def body(self, song: str) -> dict:
        return self.figures[song]

    def name(self, song: str) -> str:
        return song


def ours(src, seed: np.ndarray, seconds: float, gen, sources: dict | None = None
         ) -> tuple[float, float, np.ndarray]:
    """(wall seconds, of which the network, the songs) for one call of generate's own path;
    `sources`: an `AsIf` per length, once the songs of that length are known."""
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    palettes = silent = None
    book = src.reading.book
    if book is not None:      # as the stage: each song keeps to a palette, with the silence guard
        plays = rng.integers(0, 3, size=(len(seed), len(book.centroids)))
        palettes = plays > 0 if gen.palette == "song" else None
        silent = generate.silent_codes(book, plays, src.audio.block_size, gen.silence_db)
    n_steps = generate.steps_for(seconds, src.audio)    # and in sections, each with its cue
    section, n_cues = generate.sections_for(gen, n_steps, src.audio)
    cues = np.stack([np.roll(seed, i + 1, axis=1) for i in range(n_cues)], 1) if n_cues else None
    made = generate.generate_blocks(src.stepper, seed, n_steps, gen.temperature, rng, gen.top_k,
                                    gen.top_p, palettes, silent,
                                    generate.steps_in(gen.max_silence_s, src.audio), cues, section,
                                    levels=None if book is None else generate.code_levels(
                                        src.reading), glide=gen.level_glide)
    network = time.perf_counter() - t
    songs = generate.to_samples(made, src, dataclasses.replace(gen, seconds=seconds), rng)
    if sources is not None and seconds in sources:     # as the stage: like the songs they grew from
        generate.like_sources(songs, [dict(seed_song=str(i)) for i in range(len(songs))],
                              sources[seconds], gen, src.audio.sample_rate)
    return time.perf_counter() - t, network, songs


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


def random_source(cfg, audio, gen, n_feat: int):
    """generate's Source for a model of random weights (and a random codebook for codes)."""
    from stages.batches import Normaliser
    from stages.codebook import Codebook
    model = netlib.build_model(cfg, None, n_feat)
    rng = np.random.default_rng(0)
    book = None
    if cfg.family == "codebook":
        frames = layouts.n_features(audio.block_size, audio.layout)
        centroids = rng.normal(-4, 2, size=(n_feat, frames)).astype(np.float32)
        book = Codebook(centroids, centroids[:, None] + rng.normal(0, 0.5, (n_feat, 4, frames)
                                                                   ).astype(np.float32))
        seed = rng.integers(n_feat, size=(gen.n_songs, gen.seed_blocks)).astype(np.int32)
    else:
        seed = rng.normal(size=(gen.n_songs, gen.seed_blocks, n_feat)).astype(np.float32) * 0.1
    norm = Normaliser(np.full(n_feat, -4.0 if audio.layout == "frames" else 0.0), np.ones(n_feat))
    return generate.Source(generate.Stepper(model), None, generate.Reading(norm, book), audio), \
        seed, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--seconds", type=float, nargs="+", default=[30, 60])
    parser.add_argument("--seed-seconds", type=float, default=60,
                        help="length for the seed's way (0 skips it)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="calls per length, taken in turn; the fastest of each is reported")
    args = parser.parse_args()

    keras = netlib.import_keras()
    params = config.load_params(args.params)
    cfg = netlib.ModelConfig.from_params(params)
    audio = config.AudioConfig.from_params(params)
    block, layout = audio.block_size, audio.layout
    gen = generate.GenerateConfig.from_params(params)
    n_songs, k = gen.n_songs, gen.seed_blocks
    n_feat = (config.param(params, "codebook.codes", int) if cfg.family == "codebook"
              else layouts.n_features(block, layout))
    netlib.set_threads(gen.threads)                  # as the stage does
    keras.utils.set_random_seed(0)
    src, seed, model = random_source(cfg, audio, gen, n_feat)

    cold = ours(src, seed, args.seconds[0], gen)[0]                     # traces the graphs
    sources = {s: AsIf(ours(src, seed, s, gen)[2], audio.sample_rate) for s in args.seconds}
    print(f"{cfg.family} model, {cfg.cell} {cfg.hidden} x {cfg.layers}, {n_feat} "
          f"{'codes' if cfg.family == 'codebook' else 'features'}, {layout} layout "
          f"({block} / hop {audio.hop} at {audio.sample_rate} Hz), {n_songs} songs per call, "
          f"{k} seed steps, sections of {gen.section_s:g} s, {gen.code_frames} frames, "
          f"{gen.griffin_lim_iters} Griffin-Lim iterations, {gen.threads or 'all'} thread(s) "
          f"per op; first call (tracing included) {cold:.2f} s")
    rows, timings = {}, {s: [] for s in args.seconds}
    for _ in range(args.repeats):      # lengths interleaved: a busy moment hits each alike
        for s in args.seconds:
            timings[s].append(ours(src, seed, s, gen, sources)[:2])
    for s in args.seconds:
        wall, network = min(timings[s])
        rows[s] = dict(seconds=s, wall_s=round(wall, 3), network_s=round(network, 3),
                       rtf=round(n_songs * s / wall, 1))
        print(f"ours        {s:4.0f} s x {n_songs}: {wall:6.2f} s ({network:.2f} s the network)"
              f"  ->  {n_songs * s / wall:6.1f}x real time")
    figures = dict(rtf_30=rows.get(30, {}).get("rtf"), rtf_60=rows.get(60, {}).get("rtf"),
                   cold_first_call_s=round(cold, 2), family=cfg.family, layout=layout)
    if 30 in rows and 60 in rows:
        figures["cost_60_over_30"] = round(rows[60]["wall_s"] / rows[30]["wall_s"], 2)
        # each 60 s call against the 30 s call just before it: a slow minute slows both alike,
        # where the fastest of each may come from a quiet and a busy minute
        pairs = [b[0] / a[0] for a, b in zip(timings[30], timings[60])]
        figures["cost_60_over_30_pairs"] = round(float(np.median(pairs)), 2)
        print(f"60 s costs {figures['cost_60_over_30']}x 30 s, fastest against fastest; "
              f"{figures['cost_60_over_30_pairs']}x in the median of the {len(pairs)} side-by-side "
              f"pairs ({min(pairs):.2f}-{max(pairs):.2f}; linear would be 2.0)")
    if args.seed_seconds > 0 and (cfg.family != "regression" or layout == "frames"):
        args.seed_seconds = 0                 # the seed's way is its own model of its own blocks
    if args.seed_seconds > 0:
        model.predict_on_batch(seed)                                      # warm up
        model.predict_on_batch(np.concatenate([seed, seed], axis=1))
        wall = seeds_way(model, seed, int(np.ceil(args.seed_seconds * audio.sample_rate / block)),
                         layout, block)
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
