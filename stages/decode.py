"""Stage `decode`: every audio file under the raw folder -> data/interim/wav/<id>.wav (mono, 16-bit,
`decode.sample_rate`) and data/interim/manifest.parquet (one row per input file).

Incremental: a song whose content id already has a WAV made with the same settings is not decoded
again; a removed song's WAV is deleted; a bad file gets a `skipped` row and never stops the others.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from stages import audio, config, files, manifest, pool
from stages.config import UserError

log = logging.getLogger("rawtune.decode")

def list_audio_candidates(raw_dir: Path) -> list[Path]:
    """Every regular, non-hidden file under `raw_dir` (audio is recognised later, by content)."""
    if not raw_dir.is_dir():
        raise UserError(f"Audio folder '{raw_dir}' (params.yaml 'data.raw_dir') does not exist; "
                        "put your songs there or set data.raw_dir to your music folder.")
    found = sorted(p for p in raw_dir.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(raw_dir).parts))
    if not found:
        raise UserError(f"Audio folder '{raw_dir}' is empty; put MP3/FLAC/OGG/WAV files there.")
    return found


def unusable(name: str, frames: int, peak_dbfs: float, sample_rate: int, min_frames: int,
             silence_dbfs: float) -> str | None:
    """Why decoded audio cannot train the model (too short for one block, or silent), or None.
    Judged from the manifest alone, so new thresholds never need a song decoded again."""
    if frames < min_frames:
        return (f"{name} is shorter than one block ({frames / sample_rate:.2f} s < "
                f"{min_frames / sample_rate:.2f} s, fft_blocks.block_size = {min_frames}).")
    if peak_dbfs < silence_dbfs:
        return (f"{name} is silent (peak {peak_dbfs:.0f} dBFS, below decode.silence_dbfs = "
                f"{silence_dbfs}).")
    return None


def decode_song(src: str, dst: str, sample_rate: int, min_frames: int, silence_dbfs: float) -> dict:
    """Pure per-song work: decode `src` into the WAV `dst` (atomically) or explain why not.
    Returns the manifest fields this song's decode determines."""
    name = Path(src).name
    row = dict(status="skipped", reason="", seconds=0.0, sample_rate_in=0, channels_in=0,
               frames=0, peak_dbfs=-np.inf)
    try:
        with files.atomic_path(dst) as tmp:
            info = audio.decode_to_wav(src, tmp, sample_rate)
            row.update(seconds=info.seconds, sample_rate_in=info.sample_rate_in,
                       channels_in=info.channels_in, frames=info.frames_out,
                       peak_dbfs=round(20 * float(np.log10(max(info.peak, 1e-12))), 2))
            row["reason"] = unusable(name, row["frames"], row["peak_dbfs"], sample_rate,
                                     min_frames, silence_dbfs)
            if row["reason"]:
                raise audio.AudioError(row["reason"])     # no WAV for it
    except audio.AudioError as err:
        row["reason"] = row["reason"] or f"{name} {err}."
        return row
    except Exception as err:  # noqa: BLE001 - an odd file (a codec bug) must not stop the others
        row["reason"] = f"{name} could not be decoded ({type(err).__name__}: {err})."
        return row
    row.update(status="ok", reason="")
    return row


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as lone surrogates
        return False
    return True


def renamed_reason(reason: str, old_name: str, new_name: str) -> str:
    """A stored skip reason ("<old_name> is ...") told again about the file's current name."""
    return new_name + reason[len(old_name):] if reason.startswith(old_name) else reason


def plan(candidates: list[Path], raw_dir: Path, old: list[dict], wav_dir: Path, sample_rate: int,
         min_frames: int, silence_dbfs: float) -> tuple[list, list, int]:
    """Split files into rows known already (same file, or same content already decoded), rows
    skipped without decoding (empty, unreadable, a duplicate, a name that is not UTF-8) and songs
    to decode. Returns (rows, todo, known) where todo items are (row, src, dst) and `n_known`
    counts the rows known already. A new block size or silence threshold only re-judges the
    songs: none is decoded again for it."""
    old_by_file = {(r["path"], r["size"], r["mtime_ns"]): r for r in old}
    old_by_id: dict[str, dict] = {}
    for r in old:  # first row per id: a later one is a duplicate ("same content as")
        old_by_id.setdefault(r["id"], r)
    rows, todo, first_path, n_known = [], [], {}, 0
    for f in candidates:
        rel = f.relative_to(raw_dir).as_posix()
        st = f.stat()
        base = dict(path=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, seconds=0.0,
                    sample_rate_in=0, channels_in=0, frames=0, peak_dbfs=-np.inf)
        if not is_utf8(rel):  # the manifest (and libsndfile) need a UTF-8 name
            shown = os.fsencode(rel).decode("utf-8", "replace")
            rows.append(dict(base, path=shown, id="", status="skipped",
                             reason=f"{Path(shown).name} has a file name that is not valid "
                                    "UTF-8; rename it."))
            continue
        if st.st_size == 0:
            rows.append(dict(base, id="", status="skipped", reason=f"{f.name} is empty."))
            continue
        known = old_by_file.get((rel, st.st_size, st.st_mtime_ns))
        try:
            song_id = known["id"] if known is not None else audio.content_id(f)
        except OSError as err:
            rows.append(dict(base, id="", status="skipped",
                             reason=f"{f.name} could not be read ({err.strerror or err})."))
            continue
        base["id"] = song_id
        if song_id in first_path:
            rows.append(dict(base, status="skipped",
                             reason=f"{f.name} has the same audio content as {first_path[song_id]}."))
            continue
        first_path[song_id] = rel
        prev = old_by_id.get(song_id)
        wav = wav_dir / f"{song_id}.wav"
        if prev is not None and prev["frames"] > 0:               # decoded before
            fields = {k: prev[k] for k in ("seconds", "sample_rate_in", "channels_in", "frames",
                                           "peak_dbfs")}
            reason = unusable(f.name, prev["frames"], prev["peak_dbfs"], sample_rate, min_frames,
                              silence_dbfs)
            if reason or wav.is_file():
                rows.append(dict(base, **fields, status="skipped" if reason else "ok",
                                 reason=reason or ""))
                n_known += 1
                continue
        elif prev is not None and prev["status"] == "skipped" and prev["id"]:   # not decodable
            rows.append(dict(base, status="skipped",
                             reason=renamed_reason(prev["reason"], Path(prev["path"]).name, f.name)))
            n_known += 1
            continue
        rows.append(base)
        todo.append((base, str(f), str(wav)))
    return rows, todo, n_known


def main(args) -> None:
    params = config.load_params(args.params)
    raw_dir = Path(args.raw if args.raw is not None else config.param(params, "data.raw_dir", str))
    # only the settings decode uses: a bad fft_blocks value stops fft_blocks, after this work
    sample_rate = config.audio_setting(params, "sample_rate")
    block_size = config.audio_setting(params, "block_size")
    silence_dbfs = config.param(params, "decode.silence_dbfs", (int, float))
    song_pool = pool.SongPool.from_params(params)
    wav_dir, manifest_path = Path(args.out), Path(args.manifest)

    candidates = list_audio_candidates(raw_dir)
    stamp = dict(sample_rate=sample_rate,
                 code=pool.source_digest("stages.audio", "stages.decode"))
    kept = pool.prepare_out_dir(wav_dir, stamp)
    old = manifest.read_manifest(manifest_path) if kept and manifest_path.is_file() else []

    rows, todo, known = plan(candidates, raw_dir, old, wav_dir, sample_rate, block_size,
                             silence_dbfs)
    log.info("%d files in %s: %d to decode, %d already done, %d skipped without decoding (empty, "
             "unreadable or a duplicate)", len(candidates), raw_dir, len(todo), known,
             len(rows) - len(todo) - known)
    results = pool.map_songs(decode_song, [(os.path.abspath(src), os.path.abspath(dst), sample_rate,
                                              block_size, silence_dbfs) for _, src, dst in todo],
                               song_pool, "decode")   # absolute: a Dask worker has its own cwd
    for (row, _, _), result in zip(todo, results):
        row.update(result)

    ok = [r for r in rows if r["status"] == "ok"]
    ok_ids = {r["id"] for r in ok}
    files.remove_stale_tmp(manifest_path.parent)
    manifest.write_manifest(manifest_path, rows)
    for r in rows:
        if r["status"] == "skipped":
            log.warning("skipped: %s", r["reason"])
    if not ok_ids:  # fail before pruning: the WAVs of an earlier good run are kept
        raise UserError(f"No usable audio in '{raw_dir}': all {len(candidates)} files were skipped "
                        f"(reasons in {manifest_path}).")
    removed = pool.prune(wav_dir, ok_ids, ".wav")
    log.info("%d songs ready (%.1f min), %d skipped, %d removed; manifest: %s", len(ok_ids),
             sum(r["seconds"] for r in ok) / 60, len(rows) - len(ok), removed, manifest_path)


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--raw", default=None,
                        help="folder of audio files (default: params.yaml data.raw_dir)")
    parser.add_argument("--out", default="data/interim/wav", help="WAV folder (default: %(default)s)")
    parser.add_argument("--manifest", default="data/interim/manifest.parquet",
                        help="manifest file (default: %(default)s)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
