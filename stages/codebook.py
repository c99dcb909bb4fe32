"""Stage `codebook`: a codebook of frames learned from the training songs, and every sequence of
the tensors as codes, for the `codebook` model family (params.yaml `train.family`).

Reads the `tensors` outputs (their training split, `Tensors.read("x")`, holds training songs only,
so the codebook never sees a validation song) and writes data/codebook/:

  codebook.json     the settings, the codebook's digest (its identity, saved with every model that
                    predicts its codes), the fit's figures (distortion, codes in use, perplexity)
  centroids.npy     float32 (codes, n_features): the k-means centres, in the frames' units
  members.npy       float32 (codes, members, n_features): real training frames of each code, for
                    decoding a code into a sharp frame instead of its (blurred) average
  x.npy, y.npy, val_x.npy, val_y.npy
                    int16 (n_seq, max_seq_len): the tensors' sequences as codes (nearest centre)

The centres come from scipy's k-means (Lloyd's iterations from `codes` random training frames) on
at most `max_frames` frames drawn from the training sequences; a small library gets fewer codes,
one per `frames_per_code` training frames. For any other family the stage
writes only codebook.json saying there is no codebook, at once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from stages import arrays, config, files
from stages.config import UserError
from stages.tensor_files import Tensors

log = logging.getLogger("rawtune.codebook")

FAMILIES = ("regression", "laplace", "codebook")
SPLITS = ("", "val_")
CHUNK_ROWS = 8192          # frames assigned to codes at a time


@dataclass(frozen=True)
class CodebookConfig:
    codes: int
    frames_per_code: int
    max_frames: int
    iterations: int
    members: int
    seed: int

    @classmethod
    def from_params(cls, params: dict) -> "CodebookConfig":
        p = config.section(params, "codebook", cls)
        return cls(codes=p("codes", int, minimum=2, below=2 ** 15),     # stored as int16
                   frames_per_code=p("frames_per_code", int, minimum=1),
                   max_frames=p("max_frames", int, minimum=2),
                   iterations=p("iterations", int, minimum=1), members=p("members", int, minimum=1),
                   seed=p("seed", int))


def family(params: dict) -> str:
    """train.family: what the network predicts (the one reader of that setting)."""
    return config.param(params, "train.family", str, FAMILIES)


@dataclass(frozen=True)
class Codebook:
    """A fitted codebook, in memory."""
    centroids: np.ndarray       # (codes, n_features)
    members: np.ndarray         # (codes, members, n_features)

    @property
    def digest(self) -> str:
        return hashlib.blake2b(np.ascontiguousarray(self.centroids).tobytes(),
                               digest_size=8).hexdigest()

    def assign(self, frames: np.ndarray) -> np.ndarray:
        """The nearest centre's code of each frame (..., n_features) -> (...) int16."""
        flat = frames.reshape(-1, frames.shape[-1]).astype(np.float32)
        half_norms = 0.5 * (self.centroids ** 2).sum(axis=1)
        codes = np.empty(len(flat), np.int16)
        for start in range(0, len(flat), CHUNK_ROWS):
            rows = flat[start:start + CHUNK_ROWS]
            codes[start:start + CHUNK_ROWS] = np.argmax(rows @ self.centroids.T - half_norms, axis=1)
        return codes.reshape(frames.shape[:-1])

    def decode(self, codes: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
        """Codes (..., time) -> frames (..., time, n_features), each code played as (`how`):
        `member`, a real frame of it drawn at random; `nearest`, the real frame of it whose
        spectral shape is nearest the frame played before (the first drawn at random; the
        level is left out, or a quiet frame would choose quiet ones after it): a code held or
        revisited keeps one frame, so a held note keeps its pitch; `centroid`, the code's
        centre."""
        if how == "centroid":
            return self.centroids[codes]
        pick = rng.integers(self.members.shape[1], size=codes.shape)
        if how == "member" or codes.shape[-1] < 2:
            return self.members[codes, pick]
        # |a - b - mean(a - b)|^2 = |a|^2 - 2 a.b + |b|^2 - (sum a - sum b)^2 / n, per member
        n = self.members.shape[-1]
        squares = np.square(self.members).sum(axis=-1)             # (codes, members)
        sums = self.members.sum(axis=-1)
        for line, picks in zip(codes.reshape(-1, codes.shape[-1]).tolist(),
                               pick.reshape(-1, codes.shape[-1])):
            for t in range(1, len(line)):
                a, b, k = line[t], line[t - 1], picks[t - 1]
                if a == b:                                         # a held code keeps its frame
                    picks[t] = k
                    continue
                gap = (squares[a] - 2 * (self.members[a] @ self.members[b, k]) + squares[b, k]
                       - np.square(sums[a] - sums[b, k]) / n)
                picks[t] = gap.argmin()
        return self.members[codes, pick]


@dataclass(frozen=True)
class Codes:
    """The codebook stage's folder: the tensors' sequences as codes, read like `Tensors`."""
    folder: Path

    def path(self, suffix: str) -> Path:
        return self.folder / f"{suffix}.npy"

    @property
    def info(self) -> dict:
        return files.read_json(self.folder / "codebook.json") or {}

    def check(self) -> "Codes":
        if not self.info.get("digest") or not self.path("x").is_file():
            raise UserError(f"No codebook in '{self.folder}' (train.family is 'codebook'); run "
                            "`dvc repro codebook` first.")
        return self

    @property
    def digest(self) -> str:
        return self.info.get("digest", "")

    @property
    def n_codes(self) -> int:
        return int(self.info["codes"])

    def read(self, part: str) -> np.ndarray:
        """A split's x or y codes ("x", "y", "val_x", "val_y"), memory-mapped, as `Tensors.read`
        gives the frames they code."""
        return arrays.read(self.path(part))

    def n_sequences(self, split: str = "") -> int:
        path = self.path(f"{split}x")
        return arrays.shape_of(path)[0] if path.is_file() else 0

    def shape(self) -> tuple[int, int]:
        """(max_seq_len, number of codes)."""
        return arrays.shape_of(self.path("x"))[1], self.n_codes

    def load(self) -> Codebook:
        return Codebook(np.load(self.path("centroids"), allow_pickle=False),
                        np.load(self.path("members"), allow_pickle=False))


HASH_BASE = np.uint64(0x9E3779B97F4A7C15)


def prefix_hashes(codes: np.ndarray) -> np.ndarray:
    """(rows, n) codes -> (rows, n + 1) polynomial prefix hashes (wrapping at 2**64), from which
    `window_hashes` takes every window's hash without going over the codes again."""
    c = np.asarray(codes).astype(np.uint64) + np.uint64(1)
    prefix = np.zeros((c.shape[0], c.shape[1] + 1), np.uint64)
    with np.errstate(over="ignore"):
        for k in range(c.shape[1]):
            prefix[:, k + 1] = prefix[:, k] * HASH_BASE + c[:, k]
    return prefix


def window_hashes(prefix: np.ndarray, length: int) -> np.ndarray:
    """(rows, n - length + 1) hashes of every `length`-step window of each row: equal windows
    hash alike, others collide with odds of about 2**-64."""
    with np.errstate(over="ignore"):
        return prefix[:, length:] - prefix[:, :-length] * HASH_BASE ** np.uint64(length)


def replayed_runs(made: np.ndarray, played: np.ndarray, min_run: int) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """How much each new song (songs, n) of codes replays the training codes `played` (rows of
    consecutive codes, each a training song or sequence, padded with -1): per song the longest
    run of steps that some row holds exactly, and the share of its steps inside runs of at
    least `min_run` steps. A codebook's frames are real training frames, so a new order of them
    is new music and a long exact run is a passage played back; one code held (a silence, a
    drone) is not a passage, so a run counts only where its code changes, and a step counts in
    the share only inside a `min_run` window of the run where the code changes."""
    made = np.asarray(made)
    made_prefix, played_prefix = prefix_hashes(made), prefix_hashes(played)
    changes = np.zeros((made.shape[0], made.shape[1]), int)     # code changes up to each step
    changes[:, 1:] = np.cumsum(made[:, 1:] != made[:, :-1], axis=1)
    n, cap = made_prefix.shape[1] - 1, min(made_prefix.shape[1], played_prefix.shape[1]) - 1
    known: dict[int, np.ndarray] = {}

    def found(length: int, rows=slice(None)) -> np.ndarray:    # each window held by some row?
        if length not in known:
            known[length] = np.unique(window_hashes(played_prefix, length))
        windows, held = window_hashes(made_prefix[rows], length), known[length]
        if len(held) == 0:                                  # no training sequence
            return np.zeros(windows.shape, bool)
        at = np.minimum(np.searchsorted(held, windows), len(held) - 1)
        changing = changes[rows, length - 1:] > changes[rows, :changes.shape[1] - length + 1]
        return (held[at] == windows) & changing

    longest = np.zeros(len(made_prefix), int)
    for i in range(len(longest)):   # a run of L holds runs of every L' < L: double, then halve
        lo, hi = 0, 2                                 # (one step is no run: its code is held)
        while hi <= cap and found(hi, slice(i, i + 1)).any():
            lo, hi = hi, 2 * hi                       # runs are short: the lengths tried are few
        hi = min(hi - 1, cap)                         # and the same for every song (cached)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if found(mid, slice(i, i + 1)).any() else (lo, mid - 1)
        longest[i] = lo
    share = np.zeros(len(longest))
    if 1 <= min_run <= cap:
        for i, row in enumerate(found(min_run)):
            edges = np.zeros(n + 1, int)              # +1 where a matching window starts, -1 after
            np.add.at(edges, np.flatnonzero(row), 1)
            np.add.at(edges, np.flatnonzero(row) + min_run, -1)
            share[i] = float(np.mean(np.cumsum(edges)[:-1] > 0))
    return longest, share


def fit(frames: np.ndarray, cfg: CodebookConfig) -> tuple[Codebook, dict]:
    """k-means on `frames` (n, n_features) -> the codebook and the fit's figures."""
    from scipy.cluster.vq import kmeans2
    codes = min(cfg.codes, len(frames) // cfg.frames_per_code)    # a small library: fewer codes
    if codes < 2:
        raise UserError(f"The training songs have only {len(frames)} frames, too few for a "
                        f"codebook of {cfg.frames_per_code} frames per code "
                        "(codebook.frames_per_code); add songs.")
    if codes < cfg.codes:
        log.info("codebook: %d codes, not %d: the training songs have %d frames and each code "
                 "needs %d (codebook.frames_per_code)", codes, cfg.codes, len(frames),
                 cfg.frames_per_code)
    cfg = dataclasses.replace(cfg, codes=codes)
    data = frames.astype(np.float32)
    with warnings.catch_warnings():        # an empty cluster keeps its start: reported below
        warnings.simplefilter("ignore")
        centroids, labels = kmeans2(data, cfg.codes, iter=cfg.iterations, minit="points",
                                    seed=np.random.default_rng(cfg.seed))
    centroids = centroids.astype(np.float32)
    book = Codebook(centroids, np.empty((cfg.codes, 0, frames.shape[1]), np.float32))
    labels = book.assign(data)
    rng = np.random.default_rng(cfg.seed)
    members = np.empty((cfg.codes, cfg.members, frames.shape[1]), np.float32)
    for code in range(cfg.codes):
        rows = np.flatnonzero(labels == code)
        members[code] = data[rng.choice(rows, cfg.members)] if len(rows) else centroids[code]
    counts = np.bincount(labels, minlength=cfg.codes)
    p = counts[counts > 0] / len(labels)
    distortion = float(np.mean(np.sum((data - centroids[labels]) ** 2, axis=1)))
    figures = dict(codes=cfg.codes, frames_fitted=len(data), codes_used=int((counts > 0).sum()),
                   perplexity=round(float(np.exp(-(p * np.log(p)).sum())), 1),
                   distortion=round(distortion, 4),
                   variance=round(float(np.sum(data.var(axis=0))), 4))
    return Codebook(centroids, members), figures


def geometry(centroids: np.ndarray, dim: int) -> np.ndarray:
    """(codes, dim) vectors whose distances follow the codes' frames: the principal components of
    the centroids (each feature standardised), scaled to unit variance; zeros past the codebook's
    rank. A network whose code embedding starts here reads similar frames alike from its first
    step, which an embedding learnt from scratch must discover code by code."""
    z = (centroids - centroids.mean(axis=0)) / (centroids.std(axis=0) + 1e-3)
    z -= z.mean(axis=0)
    _, _, vt = np.linalg.svd(z.astype(np.float64), full_matrices=False)
    vectors = z @ vt[:dim].T
    vectors /= vectors.std() + 1e-12
    out = np.zeros((len(centroids), dim), np.float32)
    out[:, :vectors.shape[1]] = vectors
    return out


def training_frames(tensors: Tensors, max_frames: int, seed: int) -> np.ndarray:
    """At most `max_frames` frames drawn evenly at random from the training sequences."""
    x = tensors.read("x")
    n_seq, seq_len, n_feat = x.shape
    total = n_seq * seq_len
    picks = np.sort(np.random.default_rng(seed).choice(total, min(total, max_frames),
                                                       replace=False))
    rows = np.empty((len(picks), n_feat), np.float32)
    for start in range(0, len(picks), CHUNK_ROWS):      # a chunk at a time from the songs' maps
        chunk = picks[start:start + CHUNK_ROWS]
        rows[start:start + len(chunk)] = x[chunk // seq_len, chunk % seq_len]
    return rows


def encode_tensors(book: Codebook, tensors: Tensors, out: Path) -> None:
    """Each split's x and y as codes, streamed a few hundred sequences at a time."""
    for split in SPLITS:
        for part in ("x", "y"):
            frames = tensors.read(f"{split}{part}")
            with arrays.NpyWriter(out / f"{split}{part}.npy", frames.shape[:2], np.int16) as w:
                step = max(1, CHUNK_ROWS // max(frames.shape[1], 1))
                for start in range(0, frames.shape[0], step):
                    w.write(start, book.assign(np.asarray(frames[start:start + step])))


def main(args) -> None:
    params = config.load_params(args.params)
    out = Path(args.out)
    kind = family(params)
    tensors = Tensors.from_params(args.data, params)
    if kind != "codebook":
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        files.write_json(out / "codebook.json", dict(family=kind, codes=0, digest=""))
        log.info("codebook: not used by train.family '%s'", kind)
        return
    cfg = CodebookConfig.from_params(params)
    tensors.check()
    if tensors.audio().layout != "frames":
        raise UserError("params.yaml 'train.family' is 'codebook', which needs "
                        f"'fft_blocks.fft: frames' (the data is '{tensors.audio().layout}').")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    book, figures = fit(training_frames(tensors, cfg.max_frames, cfg.seed), cfg)
    for name, values in (("centroids", book.centroids), ("members", book.members)):
        with files.atomic_path(out / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, values)
    encode_tensors(book, tensors, out)
    files.write_json(out / "codebook.json", dict(family=kind, digest=book.digest,
                                                 **{**asdict(cfg), **figures}))
    log.info("codebook %s: %d codes (%d in use, perplexity %.0f) from %d training frames; "
             "distortion %.3g of variance %.3g", book.digest, figures["codes"], figures["codes_used"],
             figures["perplexity"], figures["frames_fitted"], figures["distortion"],
             figures["variance"])


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--data", default="data/processed",
                        help="the tensors stage's folder (default: %(default)s)")
    parser.add_argument("--out", default="data/codebook", help="output folder (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
