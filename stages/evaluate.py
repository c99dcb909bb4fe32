"""Stage `evaluate`: judge the generated songs by numbers -> metrics/eval.json and the MLflow run.

For each song in data/generated: level, silence, spectral flatness, clipping, dynamics, clicks at
block joints, tonal structure, Fréchet distances of log-mel frames and of ~1 s texture windows to
the validation songs, a copy score against the training songs, a loop score (does it play one
stretch over and over?) and the distance to the nearest other generated song, each beside
calibration points computed the same way in the same run (a real song against the validation
songs; white noise at the same loudness; the closest two real songs). Every song gets a one-line
verdict: ok / silent / quiet / noise / static / smear / clicks / copy / loop / same, with the
figure that decided it. The real songs are judged the same way; each new song names the training
song it grew from, that song's verdict, and its Fréchet distances ÷ that song's (a song grown
from a real song unlike the validation songs is as far from them as its source is), and how that
song fares through its whole length: its windows as long as a new song, one every 5 s, their
median dynamics and tonal fraction and how many are under the `static` and `smear` bars (a new
song grows from anywhere in its source, whose first window may be an intro unlike the rest). A
`static` or `smear` song whose source's windows fail the same check says so in its reason, and
is marked `fails_like_its_source` when at least half of them do. Definitions are in
`stages/quality.py`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stages import arrays, audio, config, files, quality
from stages.config import AudioConfig, UserError
from stages.tensor_files import Tensors

log = logging.getLogger("rawtune")


@dataclass(frozen=True)
class Thresholds:
    silent_fraction: float      # above: silent
    quiet_db: float             # level this far below the training songs: quiet
    noise_flatness: float       # above: noise
    static_db: float            # dynamics below: static
    smear_tonal: float          # tonal fraction below: smear
    clicks_vs_real: float       # click ratio above this multiple of the real songs': clicks
    copy_score: float           # below: copy
    loop_score: float           # below: loop
    same_vs_real: float         # nearest other song closer than this x the closest real pair: same
    reference_seconds: float    # audio read per reference song

    @classmethod
    def from_params(cls, params: dict) -> "Thresholds":
        p = config.section(params, "evaluate", cls)
        return cls(**{k: float(p(k, (int, float))) for k in cls.__dataclass_fields__})


def verdict(fig: dict, ref: dict, th: Thresholds) -> tuple[str, str]:
    """The first failed check decides; the reason names the figure and the bound."""
    checks = [
        ("silent", fig["silent_fraction"] > th.silent_fraction,
         f"silent_fraction {fig['silent_fraction']:.2f} > {th.silent_fraction}"),
        ("quiet", fig["level_vs_train_db"] < -th.quiet_db,
         f"{-fig['level_vs_train_db']:.1f} dB quieter than the training songs (> {th.quiet_db})"),
        ("noise", fig["flatness"] > th.noise_flatness,
         f"spectral flatness {fig['flatness']:.2f} > {th.noise_flatness}"),
        ("noise", fig.get("fd_frames_closer_to") == "noise",
         f"frame Fréchet distance {fig.get('fd_frames', 0):.1f} is closer to noise "
         f"({ref.get('fd_frames_noise', 0):.1f}) than to the farthest real song "
         f"({ref.get('fd_frames_real_max', ref.get('fd_frames_real', 0)):.1f})"),
        ("static", fig["dynamics_db"] < th.static_db,
         f"dynamics {fig['dynamics_db']:.1f} dB < {th.static_db}"),
        ("clicks", fig["clicks"] > th.clicks_vs_real * max(1.0, ref.get("clicks_real", 1.0)),
         f"block-edge flux ratio {fig['clicks']:.1f} > {th.clicks_vs_real} x the real songs' "
         f"{ref.get('clicks_real', 1.0):.1f}"),
        ("smear", fig["tonal_fraction"] < th.smear_tonal,
         f"tonal fraction {fig['tonal_fraction']:.3f} < {th.smear_tonal} (real songs "
         f"{ref.get('tonal_real', 0):.3f})"),
        ("copy", fig.get("copy_score", 1.0) < th.copy_score,
         f"copy score {fig.get('copy_score', 1.0):.2f} < {th.copy_score}"),
        ("loop", fig.get("loop_score", 1.0) < th.loop_score,
         f"loop score {fig.get('loop_score', 1.0):.2f} < {th.loop_score}: one stretch over and "
         f"over (real songs {ref.get('loop_real_min', 0):.2f} or more)"),
        ("same", fig.get("nearest_song_fd", np.inf) < th.same_vs_real * ref.get("songs_apart_real",
                                                                                 0.0),
         f"frame Fréchet distance {fig.get('nearest_song_fd', 0):.1f} to {fig.get('nearest_song')}"
         f" < {th.same_vs_real} x the closest two real songs' {ref.get('songs_apart_real', 0):.1f}"),
    ]
    for name, failed, reason in checks:
        if failed:
            return name, reason
    return "ok", (f"dynamics {fig['dynamics_db']:.1f} dB, tonal {fig['tonal_fraction']:.3f}"
                  + (f", copy score {fig['copy_score']:.2f}" if "copy_score" in fig else ""))


def real_distances(val_mel: list[np.ndarray], train_mel: list[np.ndarray],
                   distances: Callable) -> list:
    """The real songs' distances that calibrate a generated song's: each validation song against
    the other validation songs (when there are two or more), then every training song against
    the validation songs. `distances(mel, against=None)`: a song's log-mel frames against those
    of the songs `against` (None: every validation song)."""
    real = [distances(m, val_mel[:i] + val_mel[i + 1:])
            for i, m in enumerate(val_mel)] if len(val_mel) >= 2 else []
    return real + [distances(m) for m in train_mel]


class Copies:
    """The copy score: how far a song's passages (0.5 s of log-mel frames, every other frame)
    lie from the nearest passage of any training song, against how far the validation songs'
    lie (so a real song new to the model scores about 1, a stretch of a training song ~0.35)."""

    def __init__(self, val_mel: list[np.ndarray], train_mel: list[np.ndarray]):
        self.train = (np.concatenate([quality.passages(m) for m in train_mel]) if train_mel
                      else None)
        self.val_to_train = (quality.nearest_distance(
            np.concatenate([quality.passages(m, step=2) for m in val_mel]), self.train)
            if train_mel and val_mel else float("nan"))

    def score(self, mel: np.ndarray) -> float:
        """The copy score of a song's log-mel frames; nan with no training songs, or for a song
        shorter than a passage."""
        if not self.val_to_train > 0:                               # False for nan
            return float("nan")
        return quality.nearest_distance(quality.passages(mel, step=2),
                                        self.train) / self.val_to_train


class Reference:
    """The validation and training songs' features, computed once per run."""

    def __init__(self, val: list[np.ndarray], train: list[np.ndarray], rate: int, block_size: int,
                 song_seconds: float = 30.0):
        if not val:
            raise UserError("There are no validation songs to compare with; evaluation needs "
                            "at least two usable songs (see tensors.val_fraction).")
        self.rate, self.block_size = rate, block_size
        self.song_frames = max(1, int(song_seconds * rate / quality.HOP))
        self.val, self.train = val, train
        self.val_mel = [quality.log_mel(x, rate) for x in val]
        self.train_mel = [quality.log_mel(x, rate) for x in train]
        self.val_frames = np.concatenate(self.val_mel)
        self.val_texture = np.concatenate([quality.texture(m) for m in self.val_mel])
        self.copies = Copies(self.val_mel, self.train_mel)
        self.train_level = float(np.mean([quality.level_dbfs(x) for x in train or val]))
        self.val_level = float(np.mean([quality.level_dbfs(x) for x in val]))
        self.figures = self.calibrate(val, train)

    def distances(self, mel: np.ndarray, against: list[np.ndarray] | None = None) -> dict:
        frames = self.val_frames if against is None else np.concatenate(against)
        tex = (self.val_texture if against is None
               else np.concatenate([quality.texture(m) for m in against]))
        return dict(fd_frames=quality.frechet(mel, frames),
                    fd_texture=quality.frechet(quality.texture(mel), tex))

    def calibrate(self, val, train, max_train: int = 8) -> dict:
        """What a real song and white noise score, computed exactly as the generated ones. The
        real songs: each validation song against the others, and every training song against
        the validation songs (a corpus's songs differ in style, and a generated song may take
        after any of them; up to `max_train` of them for the figures that cost more than a
        distance). Their median distance is the real calibration point; the farthest real
        song's is as far as real music goes here (what `noise` must be farther than)."""
        real = real_distances(self.val_mel, self.train_mel, self.distances)
        real_songs = (val if len(val) >= 2 else []) + train[:max_train]
        if not real:             # one validation song and no training song: itself
            real, real_songs = [self.distances(self.val_mel[0])], val
        seconds = max(len(x) for x in val) / self.rate
        noise = np.random.default_rng(0).normal(0, 10 ** (self.val_level / 20),
                                                int(seconds * self.rate))
        noise_d = self.distances(quality.log_mel(noise, self.rate))
        # the median: one jingle or intro unlike the rest of a corpus does not move it
        ref = dict(fd_frames_real=float(np.nanmedian([r["fd_frames"] for r in real])),
                   fd_texture_real=float(np.nanmedian([r["fd_texture"] for r in real])),
                   fd_frames_real_max=float(np.nanmax([r["fd_frames"] for r in real])),
                   fd_texture_real_max=float(np.nanmax([r["fd_texture"] for r in real])),
                   fd_frames_noise=noise_d["fd_frames"], fd_texture_noise=noise_d["fd_texture"],
                   clicks_real=float(np.mean([quality.click_ratio(x, self.rate, self.block_size)
                                              for x in real_songs])),
                   tonal_real=float(np.mean([quality.tonal_fraction(x, self.rate)
                                             for x in real_songs])),
                   dynamics_real=float(np.mean([quality.dynamics_db(x) for x in real_songs])),
                   train_level_dbfs=self.train_level, **self.variety())
        return {k: round(v, 4) for k, v in ref.items()}

    def variety(self, max_songs: int = 8) -> dict:
        """How far apart the closest two real songs are (frame Fréchet distance, on windows as
        long as the generated songs), and the real songs' smallest loop score."""
        mels = (self.val_mel + self.train_mel)[:max_songs]
        short = [m[:self.song_frames] for m in mels]
        apart = float(quality.nearest_songs(short)[0].min()) if len(short) > 1 else float("nan")
        loops = [quality.loop_score(m, self.rate) for m in short]
        return dict(songs_apart_real=apart, loop_real_min=float(np.nanmin(loops + [np.inf])))

    def judge(self, x: np.ndarray, mel: np.ndarray | None = None,
              against: list[np.ndarray] | None = None, copy: bool = True) -> dict:
        """Every figure of one song (`mel`: its log-mel frames, if already computed), including
        those against the references (the validation songs, or the log-mel frames of the songs
        `against`; the copy score against the training songs unless `copy` is false)."""
        fig = quality.song_figures(x, self.rate, self.block_size)
        mel = quality.log_mel(x, self.rate) if mel is None else mel
        d = self.distances(mel, against)
        ref = self.figures
        fig.update(fd_frames=round(d["fd_frames"], 3), fd_texture=round(d["fd_texture"], 3),
                   level_vs_train_db=round(fig["rms_dbfs"] - self.train_level, 2),
                   loop_score=round(quality.loop_score(mel, self.rate), 4))
        for key in ("fd_frames", "fd_texture"):    # as near as any real song is never noise
            real = ref.get(f"{key}_real_max", ref[f"{key}_real"])
            noise = ref[f"{key}_noise"]
            fig[f"{key}_closer_to"] = ("real" if d[key] <= real
                                       or abs(d[key] - real) <= abs(d[key] - noise) else "noise")
        score = self.copies.score(mel) if copy else float("nan")
        if np.isfinite(score):                                  # nan: no copy score
            fig["copy_score"] = round(score, 4)
        return fig


    def judge_real(self, val_ids: list[str], train_ids: list[str], th: Thresholds) -> list[dict]:
        """The real songs' own verdicts, on their first stretch as long as a generated song:
        each validation song against the other validation songs (the training songs when it is
        the only one), with its copy score; each
        training song against the validation songs (no copy score: it is the training data).
        What the verdicts say of the user's own music: a new song that grows from a real song
        judged `static` tends to be judged so too."""
        n = self.song_frames * quality.HOP
        judged = []
        for split, ids, songs in (("val", val_ids, self.val), ("train", train_ids, self.train)):
            for i, (song_id, x) in enumerate(zip(ids, songs)):
                mel = quality.log_mel(x[:n], self.rate)
                others = self.val_mel[:i] + self.val_mel[i + 1:] if split == "val" else None
                if split == "val" and not others:        # one validation song: the training ones
                    others = self.train_mel or [mel]
                fig = self.judge(x[:n], mel, others, copy=split == "val")
                name, reason = verdict(fig, self.figures, th)
                judged.append(dict(song=song_id, split=split, verdict=name, reason=reason,
                                   **{k: fig[k] for k in ("dynamics_db", "tonal_fraction",
                                                          "fd_frames", "fd_texture",
                                                          "level_vs_train_db")}))
        return judged


def count_verdicts(results: list[dict]) -> dict:
    return {v: sum(r["verdict"] == v for r in results) for v in sorted({r["verdict"]
                                                                         for r in results})}


def load_song(path: Path) -> np.ndarray:
    """A song's samples as wav_to_npy wrote them (a read-only memory map); one sentence naming
    the file when it cannot be read (cut short by a full disk, overwritten by hand)."""
    x = arrays.read(path, "song array", "wav_to_npy")
    if x.ndim != 1:
        raise UserError(f"'{path}' holds an array of shape {x.shape}, not one song's samples; "
                        "run `dvc repro wav_to_npy` to write it again.")
    return x


def read_songs(npy_dir: Path, ids: list[str], seconds: float, rate: int) -> list[np.ndarray]:
    n = int(seconds * rate)
    songs = []
    for song_id in ids:
        path = npy_dir / f"{song_id}.npy"
        if path.is_file():
            songs.append(np.array(load_song(path)[:n], np.float64))
    return songs


def song_ids(tensors: Tensors) -> tuple[list[str], list[str]]:
    """(training song ids, validation song ids) from the tensors' index."""
    if not tensors.index_path.is_file():
        raise UserError(f"'{tensors.index_path}' not found; run `dvc repro tensors` first.")
    index = files.read_parquet(tensors.index_path, ["split", "song_id"]).to_pylist()
    return (sorted({r["song_id"] for r in index if r["split"] == "train"}),
            sorted({r["song_id"] for r in index if r["split"] == "val"}))


def song_names(manifest: Path) -> dict[str, str]:
    """Song id -> the file it was decoded from (empty without the decode stage's manifest)."""
    if not manifest.is_file():
        return {}
    return {r["id"]: r["path"] for r in files.read_parquet(manifest, ["id", "path"]).to_pylist()}


def generated_songs(folder: Path) -> list[Path]:
    songs = sorted(p for p in folder.glob("*.wav") if not p.name.startswith("."))
    songs += sorted(p for p in folder.glob("*.mp3") if not p.name.startswith("."))
    if not songs:
        raise UserError(f"No generated songs in '{folder}'; run `dvc repro generate` first.")
    return songs


def check_songs_made_for(data: AudioConfig, tensors: Tensors, generate_metrics: Path) -> None:
    """Refuse songs of a model made for other audio than the data (generate records the model
    and its settings); songs without that record are only checked for their sample rate."""
    made = files.read_json(generate_metrics) or {}
    if "audio" not in made:
        log.warning("'%s' does not say which audio settings made the songs; only their sample "
                    "rate is checked.", generate_metrics)
        return
    made_with = AudioConfig.from_dict(made["audio"]).with_codebook("")    # the audio, not codes
    config.check_same_audio(made_with, data, made.get("model", "?"), str(tensors.folder))


def read_generated(songs: list[Path], rate: int) -> list[np.ndarray]:
    samples = []
    for path in songs:
        x, song_rate = audio.read_mono(path)
        if song_rate != rate:
            raise UserError(f"'{path}' is at {song_rate} Hz, not the data's {rate} Hz "
                            "(decode.sample_rate); run `dvc repro generate` again.")
        samples.append(x)
    return samples


def judge_songs(songs: list[Path], ref: Reference, th: Thresholds) -> list[dict]:
    samples = read_generated(songs, ref.rate)
    mels = [quality.log_mel(x, ref.rate) for x in samples]
    distance, nearest = quality.nearest_songs(mels)
    results = []
    for i, (path, x) in enumerate(zip(songs, samples)):
        fig = ref.judge(x, mels[i])
        if nearest[i] >= 0:
            fig["nearest_song_fd"] = round(float(distance[i]), 3)
            fig["nearest_song"] = songs[nearest[i]].name
        fig["verdict"], fig["reason"] = verdict(fig, ref.figures, th)
        results.append(dict(file=path.name, **fig))
        log.info("%s: %s (%s)", path.name, fig["verdict"], fig["reason"])
    return results


def vs_source(song: dict, source: dict) -> dict:
    """A new song's figures beside those of the real song it grew from (that song's first
    stretch as long as a new song, as `judge_real` judges it): Fréchet distances and tonal
    fraction as ratios, dynamics as a difference in dB (below 0: it breathes less than its
    source)."""
    out = {f"{key}_vs_source": round(song[key] / source[key], 3)
           for key in ("fd_frames", "fd_texture", "tonal_fraction") if source.get(key)}
    out["dynamics_db_vs_source"] = round(song["dynamics_db"] - source["dynamics_db"], 2)
    return out


SOURCE_STEP_S = 5.0     # a source song is judged on windows as long as a new song, one every 5 s


def source_body(x: np.ndarray, rate: int, seconds: float, th: Thresholds) -> dict:
    """How the whole of a source song would fare on the checks a new song grown from anywhere
    in it most often fails: its windows as long as a new song (one every SOURCE_STEP_S), their
    median dynamics and tonal fraction and how many of them are under the `static` and `smear`
    bars. Its first window alone (`grows_from_verdict`) can be an intro unlike the rest."""
    windows = quality.window_figures(x, rate, seconds, SOURCE_STEP_S)
    dyn, tonal = windows["dynamics_db"], windows["tonal_fraction"]
    return dict(grows_from_windows=len(dyn),
                grows_from_dynamics_db_median=round(float(np.median(dyn)), 2),
                grows_from_tonal_median=round(float(np.median(tonal)), 4),
                grows_from_static_windows=int((dyn < th.static_db).sum()),
                grows_from_smear_windows=int((tonal < th.smear_tonal).sum()))


def typical_window_fails(body: dict, th: Thresholds) -> str:
    """The check ("static" or "smear") that a song's median window (`source_body`) fails, with
    its figures; "" when it passes both: what a new song grown from anywhere in it tends to
    fail."""
    dyn, tonal = body["grows_from_dynamics_db_median"], body["grows_from_tonal_median"]
    if dyn < th.static_db:
        return f"static (the median of its windows breathes {dyn:.1f} dB < {th.static_db:g})"
    if tonal < th.smear_tonal:
        return f"smear (the median of its windows is {tonal:.3f} tonal < {th.smear_tonal:g})"
    return ""


WINDOWS_FAILING = {"static": "grows_from_static_windows", "smear": "grows_from_smear_windows"}


def like_its_source(result: dict) -> tuple[str, bool]:
    """For a `static` or `smear` verdict whose source's own windows fail the same check (a still
    song grows still songs): the clause added to its reason, with how many of them fail, and
    whether at least half of them do (its source's typical stretch fails too); ("", False)
    otherwise."""
    key = WINDOWS_FAILING.get(result["verdict"])
    if key is None or not result.get(key):
        return "", False
    failing, windows = result[key], result["grows_from_windows"]
    return (f"; so are {failing} of the {windows} windows of {result['grows_from']} it grew "
            f"from", 2 * failing >= windows)


def summarise(results: list[dict], ref: Reference, train: dict,
              real: list[dict] | None = None) -> dict:
    summary = dict(val_loss=train.get("val_loss"), baselines=train.get("baselines"),
                   ratio_to_best_baseline=train.get("ratio_to_best_baseline"),
                   calibration=ref.figures, songs=results, verdicts=count_verdicts(results),
                   all_ok=all(r["verdict"] == "ok" for r in results))
    if real is not None:
        summary.update(real_songs=real, real_verdicts=count_verdicts(real))
    for key in ("fd_frames", "fd_texture", "dynamics_db", "clicks", "tonal_fraction",
                "copy_score", "rms_dbfs", "flatness", "loop_score", "nearest_song_fd",
                "fd_frames_vs_source", "fd_texture_vs_source", "tonal_fraction_vs_source",
                "dynamics_db_vs_source", "dynamics_db_vs_source_body"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            summary[f"mean_{key}"] = round(float(np.mean(values)), 4)
    return summary


def add_sources(results: list[dict], real: list[dict], made: dict, npy: Path, rate: int,
                th: Thresholds) -> None:
    """To each new song, what the verdicts say of the real song it grew from (its first window,
    and its whole body) and how much of it generate played back."""
    real_of = {r["song"]: r for r in real}
    made_of = {s.get("file"): s for s in made.get("songs", [])}
    bodies: dict[str, dict] = {}
    for result in results:
        song = made_of.get(result["file"], {})
        result.update({k: v for k, v in song.items() if k.startswith("replayed_")})
        source = real_of.get(song.get("seed_song"))
        if not source:
            continue
        result.update(grows_from=source["file"], grows_from_verdict=source["verdict"],
                      **vs_source(result, source))
        if source["song"] not in bodies:
            x = load_song(npy / f"{source['song']}.npy")
            bodies[source["song"]] = source_body(x, rate, float(made.get("seconds", 30.0)), th)
        result.update(bodies[source["song"]])
        result["dynamics_db_vs_source_body"] = round(
            result["dynamics_db"] - result["grows_from_dynamics_db_median"], 2)
        clause, result["fails_like_its_source"] = like_its_source(result)
        if clause:
            result["reason"] += clause
            log.info("%s: %s%s", result["file"], result["verdict"], clause)


def log_to_run(params: dict, summary: dict, metrics_path: str, run_id: str | None) -> None:
    from stages import tracking
    tracker = tracking.join_run(config.TrackingConfig.from_params(params), run_id)
    if tracker is None:
        return
    tracker.log_changing_params({"evaluate": params.get("evaluate", {})})
    tracker.log_metrics({f"eval_{k}": v for k, v in summary.items() if k.startswith("mean_")})
    tracker.log_metrics({f"eval_calibration_{k}": v for k, v in summary["calibration"].items()})
    tracker.log_metrics({"eval_songs_ok": summary["verdicts"].get("ok", 0)})
    if summary.get("real_songs"):
        tracker.log_metrics({"eval_real_songs_ok": summary["real_verdicts"].get("ok", 0),
                             "eval_real_songs": len(summary["real_songs"])})
    tracker.set_tags({f"eval.{r['file']}": f"{r['verdict']}: {r['reason']}"
                      for r in summary["songs"]})
    tracker.log_artifact(metrics_path, "evaluation")
    tracker.end()


def main(args) -> None:
    params = config.load_params(args.params)
    th = Thresholds.from_params(params)
    tensors = Tensors.from_params(args.data, params)
    train_ids, val_ids = song_ids(tensors)
    names = song_names(Path(args.manifest))
    songs = generated_songs(Path(args.generated))
    data = tensors.audio()
    check_songs_made_for(data, tensors, Path(args.generate_metrics))
    rate, npy = data.sample_rate, Path(args.npy)
    made = files.read_json(args.generate_metrics) or {}
    val_ids, train_ids = ([i for i in ids if (npy / f"{i}.npy").is_file()]
                          for ids in (val_ids, train_ids))
    ref = Reference(read_songs(npy, val_ids, th.reference_seconds, rate),
                    read_songs(npy, train_ids, th.reference_seconds, rate), rate, data.block_size,
                    float(made.get("seconds", 30.0)))
    log.info("calibration: frame FD real %.1f / noise %.1f, texture FD real %.1f / noise %.1f",
             ref.figures["fd_frames_real"], ref.figures["fd_frames_noise"],
             ref.figures["fd_texture_real"], ref.figures["fd_texture_noise"])
    real = ref.judge_real(val_ids, train_ids, th)
    for r in real:
        r["file"] = names.get(r["song"], r["song"])
        log.info("real song %s (%s): %s (%s)", r["file"], r["split"], r["verdict"], r["reason"])
    log.info("the real songs, judged the same way: %s", ", ".join(
        f"{n} {v}" for v, n in count_verdicts(real).items()))
    results = judge_songs(songs, ref, th)
    add_sources(results, real, made, npy, rate, th)
    train = files.read_json(args.train_metrics)
    if train is None:
        log.warning("'%s' not found: the validation loss is left out.", args.train_metrics)
    summary = summarise(results, ref, train or {}, real)
    files.write_json(args.metrics, summary)
    log_to_run(params, summary, args.metrics, (train or {}).get("mlflow_run_id"))


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--generated", default="data/generated",
                        help="the generated songs (default: %(default)s)")
    parser.add_argument("--data", default="data/processed",
                        help="the tensors stage's folder, for the song split (default: %(default)s)")
    parser.add_argument("--npy", default="data/interim/npy",
                        help="the songs as samples (default: %(default)s)")
    parser.add_argument("--manifest", default="data/interim/manifest.parquet",
                        help="decode's manifest, naming each song's file (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/eval.json",
                        help="the figures and verdicts (default: %(default)s)")
    parser.add_argument("--train-metrics", default="metrics/train.json",
                        help="train's metrics: validation loss and MLflow run (default: %(default)s)")
    parser.add_argument("--generate-metrics", default="metrics/generate.json",
                        help="generate's summary: the model and its audio settings "
                             "(default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
