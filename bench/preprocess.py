"""Benchmark of preprocessing, three ways over the same corpus, each in its own process tree:

  seed   the original seed's code, ported from Python 2 as its authors wrote it (mono MP3 round
         trip, 16-bit WAV, Python loops, float64, all in memory; it read at most 20 .mp3, here all)
  ours   `dvc repro tensors` from scratch in a fresh git + DVC copy of this project
  floor  decode + mono + resample to 44.1 kHz + rfft of the blocks; nothing written, one process

Peak memory is the largest sum of RSS over the process tree (dvc, stages, pool workers), sampled
every 25 ms. Each way runs on the corpus and on a larger one: `--scale` times the corpus, or the
folders given with `--large` together; then come a no-change repro and adding one song to a
`--songs`-song demo corpus. With `--dask` ours also runs on the larger corpus with
`preprocess.executor: dask` (a LocalCluster of as many workers as the local pool). The seed's way
holds everything in memory: it is stopped when its processes pass `--seed-memory-gb`, and the
table says how far it got. The last line printed is a JSON object of the headline figures.

    .venv/bin/python bench/preprocess.py                 # the demo songs of params.yaml `demo:`
    .venv/bin/python bench/preprocess.py --corpus ~/music --skip-seed
    .venv/bin/python bench/preprocess.py --corpus /usr/share/games/etr \
        /usr/share/games/frozen-bubble --large /usr/share/games/supertux2/music \
        /usr/share/games/frozen-bubble /usr/share/games/etr --dask     # 22 minutes, 2 hours
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from stages import audio, config, synth  # noqa: E402
from stages.layouts import to_blocks  # noqa: E402

RATE = 44100
WAYS = ("seed", "ours", "floor")
ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           DVC_NO_ANALYTICS="1")                   # dvc from this venv, as after `make setup`
TARGETS = dict(speedup_vs_seed=">= 5", ours_vs_floor="<= 2", ours_compute_vs_floor="<= 2",
               ours_peak_rss_mb="<= 1024", ours_rss_growth_large="<= 1.2", noop_repro_s="<= 3",
               add_one_song_fraction="<= 0.15", dask_vs_local_large="<= 1.2")


def seconds(path: Path) -> float:
    try:
        return audio.info(path).duration
    except (RuntimeError, TypeError):                  # libsndfile cannot read it (a .raw)
        return 0.0


def audio_files(corpus: Path) -> list[Path]:
    """The files under `corpus` that libsndfile can read (what the seed and the floor take)."""
    return [p for p in sorted(corpus.rglob("*")) if p.is_file() and not p.name.startswith(".")
            and seconds(p) > 0]


# --- the seed's way: its functions as its authors wrote them, file discovery aside ---------------

def seed_mono_wav(src: Path, tmp_dir: Path, wav_dir: Path) -> Path:
    """`lame -a -m m` then `lame --decode --resample 44.1`, done with libsndfile's LAME/mpg123,
    whole files in memory as the seed's tools held them."""
    mono, rate = audio.read_mono(src)
    if rate > 48000:                                   # lame resamples what MP3 cannot hold
        mono, rate = audio.resample(mono, rate, RATE), RATE
    mp3 = audio.write_lame_mp3(tmp_dir / (src.stem + ".mp3"), mono, rate)
    mono, rate = audio.read_mono(mp3)
    mono = audio.resample(mono, rate, RATE)
    wav = wav_dir / (src.stem + ".wav")
    audio.write(wav, np.clip(np.round(mono * 32767), -32768, 32767).astype(np.int16), RATE, "WAV",
                "PCM_16")
    return wav


def read_wav_as_np(filename):
    data = audio.read(filename, "int16")               # the seed: scipy.io.wavfile.read
    np_arr = data[0][:, 0].astype('float32') / 32767.0
    return np_arr, data[1]


def convert_np_audio_to_sample_blocks(song_np, block_size):
    block_lists, total_samples, num_samples_so_far = [], song_np.shape[0], 0
    while num_samples_so_far < total_samples:
        block = song_np[num_samples_so_far:num_samples_so_far + block_size]
        if block.shape[0] < block_size:
            padding = np.zeros((block_size - block.shape[0],))
            block = np.concatenate((block, padding))
        block_lists.append(block)
        num_samples_so_far += block_size
    return block_lists


def time_blocks_to_fft_blocks(blocks_time_domain):
    fft_blocks = []
    for block in blocks_time_domain:
        fft_block = np.fft.fft(block.astype(np.float64))  # numpy < 2 always computed in double
        fft_blocks.append(np.concatenate((np.real(fft_block), np.imag(fft_block))))
    return fft_blocks


def load_training_example(filename, block_size=2048):
    data, bitrate = read_wav_as_np(filename)
    x_t = convert_np_audio_to_sample_blocks(data, block_size)
    y_t = x_t[1:]
    y_t.append(np.zeros(block_size))  # Add special end block composed of all zeros
    return time_blocks_to_fft_blocks(x_t), time_blocks_to_fft_blocks(y_t)


def convert_wav_files_to_nptensor(files, block_size, max_seq_len, out_file):
    chunks_X, chunks_Y = [], []
    for file in files:
        X, Y = load_training_example(str(file), block_size)
        cur_seq, total_seq = 0, len(X)
        while cur_seq + max_seq_len < total_seq:
            chunks_X.append(X[cur_seq:cur_seq + max_seq_len])
            chunks_Y.append(Y[cur_seq:cur_seq + max_seq_len])
            cur_seq += max_seq_len
    out_shape = (len(chunks_X), max_seq_len, block_size * 2)
    x_data, y_data = np.zeros(out_shape), np.zeros(out_shape)
    for n in range(len(chunks_X)):
        for i in range(max_seq_len):
            x_data[n][i] = chunks_X[n][i]
            y_data[n][i] = chunks_Y[n][i]
    mean_x = np.mean(np.mean(x_data, axis=0), axis=0)
    std_x = np.sqrt(np.mean(np.mean(np.abs(x_data - mean_x) ** 2, axis=0), axis=0))
    std_x = np.maximum(1.0e-8, std_x)
    x_data[:][:] -= mean_x
    x_data[:][:] /= std_x
    y_data[:][:] -= mean_x
    y_data[:][:] /= std_x
    for suffix, arr in (("_mean", mean_x), ("_var", std_x), ("_x", x_data), ("_y", y_data)):
        np.save(out_file + suffix, arr)


def seed_way(corpus: Path, out: Path, block_size: int, max_seq_len: int) -> None:
    (out / "tmp").mkdir(parents=True)
    (out / "wave").mkdir()
    files = audio_files(corpus)
    wavs = []
    for i, f in enumerate(files, 1):                   # progress, for a run stopped half-way
        wavs.append(seed_mono_wav(f, out / "tmp", out / "wave"))
        print(f"seed: wav {i}/{len(files)}", flush=True)
    print("seed: tensors of every song, in memory", flush=True)
    convert_wav_files_to_nptensor(wavs, block_size, max_seq_len, str(out / "music"))
    print("seed: done", flush=True)


def floor_way(corpus: Path, block_size: int) -> None:
    for f in audio_files(corpus):
        mono, rate = audio.read_mono(f, "float32")
        mono = audio.resample(mono, rate, RATE)
        np.fft.rfft(to_blocks(mono, block_size), axis=-1)


# --- measuring ---------------------------------------------------------------------------------

def measure(cmd: list[str], log: Path, cwd: Path | None = None, interval: float = 0.025,
            env: dict | None = None, limit_mb: float = 0) -> dict:
    """Run `cmd`, sampling the RSS of its whole process tree; time each `stages.<name>` process.
    With `limit_mb`, a tree that passes it is killed and the result says `stopped`."""
    os.sync()                                          # no earlier run's writeback in this one
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or ENV, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    root, peak, names, spans, stopped = psutil.Process(proc.pid), 0, {}, {}, ""
    while not (done := os.wait4(proc.pid, os.WNOHANG))[0]:
        total, now = 0, time.perf_counter()
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.Error:                           # it has just exited
            continue
        for p in tree:
            try:
                total += p.memory_info().rss
                if not names.get(p.pid):                   # again until it has exec'ed
                    found = re.findall(r"-m stages\.(\w+)", " ".join(p.cmdline()))
                    names[p.pid] = found[0] if found else ""
            except psutil.Error:
                continue
            if names[p.pid]:
                spans[names[p.pid]] = (spans.get(names[p.pid], (now,))[0], now)
        peak = max(peak, total)
        if limit_mb and total > limit_mb * 2**20 and not stopped:
            stopped = f"stopped at {total / 2**30:.1f} GB after {now - start:.0f} s"
            os.killpg(proc.pid, 9)
        time.sleep(interval)
    if stopped:
        lines = [line for line in log.read_text().splitlines() if line.startswith("seed: ")]
        stopped += f" ({lines[-1][6:] if lines else 'before its first song'})"
        return dict(s=time.perf_counter() - start, rss_mb=peak / 2**20, stopped=stopped,
                    maxrss_mb=done[2].ru_maxrss / 1024, stages={})
    if os.waitstatus_to_exitcode(done[1]) != 0:
        sys.exit(f"error: {' '.join(cmd)} failed; its output:\n{log.read_text()[-3000:]}")
    return dict(s=time.perf_counter() - start, rss_mb=peak / 2**20,
                maxrss_mb=done[2].ru_maxrss / 1024,
                stages={k: b - a for k, (a, b) in spans.items()})


def corpus_project(dst: Path, corpus: Path, block_size: int, updates: dict | None = None) -> Path:
    """A fresh git + DVC copy of the project (the tests' `make_project`, with params.yaml's own
    values) whose `data.raw_dir` is the corpus, with `updates` ({"section.key": value}) applied."""
    from tests.conftest import make_project      # here, not at the top: the timed workers skip it
    make_project(dst, {"data.raw_dir": str(corpus), "fft_blocks.block_size": block_size,
                       **(updates or {})}, small=False)
    subprocess.run(["dvc", "config", "--local", "core.site_cache_dir", str(dst / ".dvc" / "site")],
                   cwd=dst, env=ENV, check=True, capture_output=True)
    return dst


def repro(project: Path, log: Path) -> dict:
    return measure(["dvc", "repro", "tensors"], log, cwd=project)


def worker(way: str, corpus: Path, out: Path, block_size: int, limit_mb: float = 0) -> dict:
    result = measure([sys.executable, __file__, "--worker", way, "--corpus", str(corpus), "--out",
                      str(out), "--block-size", str(block_size)], out.with_suffix(".log"),
                     limit_mb=limit_mb)
    shutil.rmtree(out, ignore_errors=True)            # the seed's tensors: GBs at 4x
    return result


# --- the benchmark -----------------------------------------------------------------------------

def demo_corpus(folder: Path, n_songs: int, demo: dict) -> Path:
    synth.write_demo(folder, n_songs, demo["min_seconds"], demo["max_seconds"], demo["seed"])
    return folder


def scaled_copy(src: Path, dst: Path, scale: int) -> Path:
    """`scale` times the songs of `src`: each song, plus copies re-encoded at a slightly lower gain
    (same format and rate, distinct content, so no way can skip them as duplicates)."""
    shutil.copytree(src, dst)
    for f in audio_files(src):
        info, (data, rate) = audio.info(f), audio.read(f, "float32")
        for k in range(1, scale):
            out = dst / f.relative_to(src).with_name(f"{f.stem} x{k}{f.suffix}")
            audio.write(out, data * np.float32(1 - 0.01 * k), rate, info.format, info.subtype)
    return dst


def linked_corpus(folders: list[Path], dst: Path) -> Path:
    """One folder of links to every audio file under `folders` (several Debian music packages as
    one library), named by their folder so no two collide."""
    dst.mkdir(parents=True)
    for k, folder in enumerate(folders):
        for f in audio_files(folder.resolve()):
            (dst / f"{k}-{f.parent.name}-{f.name}").symlink_to(f)
    return dst


def run_size(label: str, corpus: Path, tmp: Path, params: dict, skip_seed: bool,
             seed_limit_mb: float, dask: bool = False) -> dict:
    files = audio_files(corpus)
    row = dict(label=label, corpus=corpus, songs=len(files), minutes=sum(map(seconds, files)) / 60)
    block_size = params["fft_blocks"]["block_size"]    # the seed holds, all in float64: blocks of
    need = 6 * 2 * block_size * 8 * sum(                # x and y, x_data, y_data, std's temporaries
        math.ceil(seconds(f) * RATE / block_size) for f in files)
    if not skip_seed:
        row["seed"] = worker("seed", corpus, tmp / f"seed-{label}", block_size, seed_limit_mb)
        if row["seed"].get("stopped"):
            print(f"[{label}] The seed's way was {row['seed']['stopped']} (it would need about "
                  f"{need / 2**30:.1f} GB).", flush=True)
    row["project"] = corpus_project(tmp / f"ours-{label}", corpus, block_size)
    row["ours"] = repro(row["project"], tmp / f"ours-{label}.log")
    row["noop"] = repro(row["project"], tmp / f"noop-{label}.log")
    row["floor"] = worker("floor", corpus, tmp / f"floor-{label}", block_size)
    if dask:
        project = corpus_project(tmp / f"dask-{label}", corpus, block_size,
                                 {"preprocess.executor": "dask"})
        row["dask"] = repro(project, tmp / f"dask-{label}.log")
    print(f"[{label}] " + ", ".join(f"{w} {row[w]['s']:.1f} s" for w in WAYS + ("dask",)
                                    if w in row)
          + f" (seed estimated at {need / 2**20:.0f} MB)", flush=True)
    return row


def add_one_song(rows: list[dict], n_songs: int, demo: dict, tmp: Path, block_size: int,
                 real: Path | None = None, min_seconds: float = 0) -> dict:
    """Time the re-run after one more song lands in an `n_songs`-song project: the first songs
    of the `real` corpus when given (those of at least `min_seconds`), else demo songs (the
    larger corpus's project, when that is the same demo corpus)."""
    same = [r for r in rows if r["songs"] == n_songs and r["corpus"].parent == tmp]
    if real is not None:
        songs = [f for f in audio_files(real) if seconds(f) >= min_seconds][:n_songs + 1]
        if len(songs) <= n_songs:
            sys.exit(f"error: --songs {n_songs}: the corpus has only {len(songs)} songs"
                     + (f" of at least {min_seconds:g} s." if min_seconds else "."))
        corpus = tmp / f"corpus-{n_songs}"
        corpus.mkdir()
        for f in songs[:n_songs]:
            (corpus / f.name).symlink_to(f.resolve())
        project = corpus_project(tmp / "ours-add-one", corpus, block_size)
        full = repro(project, tmp / "full.log")
        (corpus / songs[-1].name).symlink_to(songs[-1].resolve())
        again = repro(project, tmp / "add-one.log")
        return dict(full_s=full["s"], s=again["s"], fraction=again["s"] / full["s"], run=again,
                    fixed=fixed_cost(project, tmp),
                    songs=f"{n_songs} real songs, {sum(map(seconds, songs[:n_songs])) / 60:.1f} "
                          f"min, + one of {seconds(songs[-1]):.0f} s")
    if same:
        project, corpus, full = same[0]["project"], same[0]["corpus"], same[0]["ours"]
    else:
        corpus = demo_corpus(tmp / f"corpus-{n_songs}", n_songs, demo)
        project = corpus_project(tmp / "ours-add-one", corpus, block_size)
        full = repro(project, tmp / "full.log")
    demo_corpus(corpus, n_songs + 1, demo)             # writes only the new song
    again = repro(project, tmp / "add-one.log")
    return dict(full_s=full["s"], s=again["s"], fraction=again["s"] / full["s"], run=again,
                fixed=fixed_cost(project, tmp), songs=f"{n_songs} demo songs + one")


def fixed_cost(project: Path, tmp: Path) -> dict:
    """What any change that reaches every preprocessing stage costs before its songs' own work:
    `dvc repro -f tensors` right after the add-one run, the four stages run with nothing to
    compute (DVC's checks, hashes and lock file; each stage's process start, imports and scan)."""
    return measure(["dvc", "repro", "-f", "tensors"], tmp / "forced.log", cwd=project)


# what one second of audio leaves on disk in a project: WAV, npy, frames, x and y, each also in
# DVC's cache (the defaults' frames; the seed's layouts write less)
PROJECT_BYTES_PER_S = 2 * 660e3


def check_disk(tmp: Path, projects: dict[Path, int]) -> None:
    """Stop with one sentence when the projects (how many of each corpus) would not fit: a full
    disk kills a stage's pool worker mid-write (SIGBUS on its memory map) instead of raising an
    error. The caller removes `tmp`."""
    need = PROJECT_BYTES_PER_S * sum(n * sum(map(seconds, audio_files(corpus)))
                                     for corpus, n in projects.items())
    free = shutil.disk_usage(tmp).free
    if free < need:
        sys.exit(f"error: the benchmark's projects need about {need / 2**30:.1f} GB in {tmp.parent} "
                 f"and {free / 2**30:.1f} GB are free; free some space or set TMPDIR to a larger "
                 "disk.")


def say_add_one(inc: dict) -> None:
    fixed = inc["fixed"]
    print(f"add one song to {inc['songs']}: {inc['s']:.1f} s after a full run of "
          f"{inc['full_s']:.1f} s ({inc['fraction']:.2f}); stage processes "
          + ", ".join(f"{k} {v:.1f} s" for k, v in inc["run"]["stages"].items())
          + f". The same stages forced with nothing to compute (the fixed cost of any change): "
          f"{fixed['s']:.1f} s ({fixed['s'] / inc['full_s']:.2f} of the full run; stage processes "
          + ", ".join(f"{k} {v:.1f} s" for k, v in fixed["stages"].items()) + ")", flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def report(rows: list[dict], inc: dict, scale: int) -> dict:
    """Print the table and the findings; return the headline figures."""
    print(f"\n{'corpus':<7}{'songs':>6}{'min':>7}" + "".join(
        f" | {w + ' s':>8} {w + ' MB':>8}" for w in WAYS) + f" | {'noop s':>6} | {'dask s':>6}")
    for r in rows:
        print(f"{r['label']:<7}{r['songs']:>6}{r['minutes']:>7.2f}" + "".join(
            f" | {r[w]['s']:8.1f} {r[w]['rss_mb']:8.0f}" if w in r else f" | {'-':>8} {'-':>8}"
            for w in WAYS) + f" | {r['noop']['s']:>6.2f} | "
            + (f"{r['dask']['s']:>6.1f}" if "dask" in r else f"{'-':>6}"))
    for r in rows:
        if r.get("seed", {}).get("stopped"):
            print(f"seed {r['label']}: {r['seed']['stopped']}; its time and memory above are "
                  "up to there")
    print("\nlargest single process, MB: " + "; ".join(r["label"] + " " + ", ".join(
        f"{w} {r[w]['maxrss_mb']:.0f}" for w in WAYS if w in r) for r in rows))
    for label, run in [(r["label"], r["ours"]) for r in rows] + [("add-one", inc["run"])]:
        st = run["stages"]
        print(f"ours {label}: stage processes " + ", ".join(f"{k} {v:.1f} s" for k, v in st.items())
              + f"; DVC itself {run['s'] - sum(st.values()):.1f} s of {run['s']:.1f} s")
    (one, big), seed = rows, [r.get("seed", {}) for r in rows]
    finished = [s if not s.get("stopped") else {} for s in seed]
    head = dict(minutes=round(one["minutes"], 1), minutes_large=round(big["minutes"], 1),
                speedup_vs_seed=ratio(finished[0].get("s"), one["ours"]["s"]),
                speedup_vs_seed_large=ratio(finished[1].get("s"), big["ours"]["s"]),
                seed_stopped_large=seed[1].get("stopped"),
                ours_vs_floor=ratio(one["ours"]["s"], one["floor"]["s"]),
                ours_vs_floor_large=ratio(big["ours"]["s"], big["floor"]["s"]),
                ours_compute_vs_floor=ratio(sum(one["ours"]["stages"].values()), one["floor"]["s"]),
                ours_compute_vs_floor_large=ratio(sum(big["ours"]["stages"].values()),
                                               big["floor"]["s"]),
                ours_peak_rss_mb=round(max(r["ours"]["rss_mb"] for r in rows)),
                ours_rss_growth_large=ratio(big["ours"]["rss_mb"], one["ours"]["rss_mb"]),
                seed_peak_rss_mb_1x=seed[0].get("rss_mb") and round(seed[0]["rss_mb"]),
                seed_peak_rss_mb_large=seed[1].get("rss_mb") and round(seed[1]["rss_mb"]),
                seed_rss_growth_large=ratio(seed[1].get("rss_mb"), seed[0].get("rss_mb")),
                noop_repro_s=round(max(r["noop"]["s"] for r in rows), 2),
                add_one_song_fraction=round(inc["fraction"], 3),
                add_one_fixed_fraction=round(inc["fixed"]["s"] / inc["full_s"], 3),
                dask_vs_local_large=ratio(big.get("dask", {}).get("s"), big["ours"]["s"]))
    print("\n" + "\n".join(f"{k:<24}{v!s:<10}{'target ' + TARGETS[k] if k in TARGETS else ''}"
                           for k, v in head.items()))
    return head


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, nargs="+", metavar="DIR", help="folder(s) of "
                        "audio files (default: the demo songs of params.yaml `demo:`, written to "
                        "a temp folder)")
    parser.add_argument("--scale", type=int, default=4, help="size of the larger corpus, in "
                        "corpora (default: %(default)s)")
    parser.add_argument("--large", type=Path, nargs="+", metavar="DIR", help="the larger corpus: "
                        "these folders together (e.g. two hours of Debian game music), instead "
                        "of --scale copies of the corpus")
    parser.add_argument("--dask", action="store_true", help="also run ours on the larger corpus "
                        "with preprocess.executor: dask")
    parser.add_argument("--seed-memory-gb", type=float, help="stop the seed's way when its "
                        "processes pass this (default: 70%% of the memory available at start)")
    parser.add_argument("--songs", type=int, default=20, help="songs in the add-one test "
                        "(default: %(default)s)")
    parser.add_argument("--min-song-seconds", type=float, default=0, help="songs in the add-one "
                        "test: only those of --corpus at least this long, e.g. 120 for "
                        "album-length songs (default: every song)")
    parser.add_argument("--block-size", type=int, help="samples per block for every way "
                        "(default: params.yaml fft_blocks.block_size; the seed's code used 2048)")
    parser.add_argument("--skip-seed", action="store_true", help="do not run the seed's way")
    parser.add_argument("--only-add-one", action="store_true", help="only time adding one song "
                        "to the first --songs songs of --corpus (or of demo songs)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders and logs")
    parser.add_argument("--worker", choices=("seed", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser


def main(args: argparse.Namespace) -> None:
    params = config.load_params(ROOT / "params.yaml")
    if args.block_size:                                # both ways, e.g. the seed's own 2048
        params["fft_blocks"]["block_size"] = args.block_size
    block_size, max_seq_len = params["fft_blocks"]["block_size"], params["tensors"]["max_seq_len"]
    if args.worker:
        return (seed_way(args.corpus[0], args.out, block_size, max_seq_len)
                if args.worker == "seed" else floor_way(args.corpus[0], block_size))
    demo, tmp = params["demo"], Path(tempfile.mkdtemp(prefix="rawtune-bench-"))
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, block_size {block_size}, "
          f"max_seq_len {max_seq_len}, workers {params['preprocess']['workers']}", flush=True)
    try:
        if args.only_add_one:                     # neither the seed's way nor a larger corpus
            real = (None if not args.corpus else args.corpus[0].resolve()
                    if len(args.corpus) == 1 else linked_corpus(args.corpus, tmp / "corpus-1x"))
            if real is not None:
                check_disk(tmp, {real: 1})
            inc = add_one_song([], args.songs, demo, tmp, block_size, real,
                               args.min_song_seconds)
            say_add_one(inc)
            print(json.dumps(dict(add_one_song_fraction=round(inc["fraction"], 3),
                                  add_one_s=round(inc["s"], 1), full_s=round(inc["full_s"], 1),
                                  fixed_s=round(inc["fixed"]["s"], 2),
                                  fixed_fraction=round(inc["fixed"]["s"] / inc["full_s"], 3))))
            return
        if args.corpus:
            small = (args.corpus[0].resolve() if len(args.corpus) == 1 else
                     linked_corpus(args.corpus, tmp / "corpus-1x"))
            big = (linked_corpus(args.large, tmp / "corpus-large") if args.large else
                   scaled_copy(small, tmp / f"corpus-{args.scale}x", args.scale))
        else:
            small = demo_corpus(tmp / "corpus-1x", demo["songs"], demo)
            big = (linked_corpus(args.large, tmp / "corpus-large") if args.large else
                   demo_corpus(tmp / f"corpus-{args.scale}x", demo["songs"] * args.scale, demo))
        check_disk(tmp, {small: 1, big: 2 if args.dask else 1})
        limit_mb = (args.seed_memory_gb * 1024 if args.seed_memory_gb
                    else 0.7 * psutil.virtual_memory().available / 2**20)
        rows = [run_size(label, corpus, tmp, params, args.skip_seed, limit_mb, dask and args.dask)
                for label, corpus, dask in (("1x", small, False),
                                            ("large" if args.large else f"{args.scale}x", big,
                                             True))]
        inc = add_one_song(rows, args.songs, demo, tmp, block_size, small if args.corpus else None,
                           args.min_song_seconds)
        say_add_one(inc)
        head = report(rows, inc, args.scale)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(head))


if __name__ == "__main__":
    cli = build_parser()
    parsed = cli.parse_args()
    if parsed.scale < 2 and not parsed.large:
        cli.error(f"--scale {parsed.scale}: the larger corpus is that many copies of the first, "
                  "so it must be at least 2 (or name its folders with --large).")
    main(parsed)
