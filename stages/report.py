"""What a person reads at the end of a run, in under 80 columns: each new song's verdict with the
figure that decided it, where the files are, and the next command; and the address of the MLflow
runs table (`make ui` prints it).

    python -m stages.report              # after `dvc repro` (make demo ends with it)
    python -m stages.report --html metrics/report.html   # the same as a page, offline
    python -m stages.report --ui-address --port 5000

The page holds every picture it shows (PNG as data: URIs) and no script, so it opens anywhere,
network or not; the songs play from data/generated/ beside it.
"""
from __future__ import annotations

import base64
import html
import os
import textwrap
from pathlib import Path

from stages import config, files

WIDTH = 79


def ui_address(tracking: config.TrackingConfig, port: int) -> str:
    """The runs table of the project's experiment, or the UI's front page when there is none
    yet (or the store cannot be read)."""
    base = f"http://127.0.0.1:{port}"
    prefix = "sqlite:///"
    if tracking.uri.startswith(prefix) and not Path(tracking.uri[len(prefix):]).is_file():
        return base                  # no runs yet (and opening the store would create it)
    try:
        from mlflow import MlflowClient
        experiment = MlflowClient(tracking.uri).get_experiment_by_name(tracking.experiment)
    except Exception:  # noqa: BLE001 - no store yet: the front page is the honest address
        return base
    return f"{base}/#/experiments/{experiment.experiment_id}/runs" if experiment else base


def song_lines(evaluation: dict) -> list[str]:
    """One entry per song: name, verdict and the deciding figure, wrapped to WIDTH."""
    songs = evaluation.get("songs", [])
    if not songs:
        return ["  (no songs judged: run `dvc repro evaluate`)"]
    name_w = max(len(s["file"]) for s in songs)
    lines = []
    for s in songs:
        head = f"  {s['file']:<{name_w}}  {s['verdict']:<7} "
        lines += textwrap.wrap(s["reason"], WIDTH, initial_indent=head,
                               subsequent_indent=" " * len(head)) or [head.rstrip()]
    return lines


def summary(metrics_dir: Path, generated: Path, model: Path, port: int,
            tracking: config.TrackingConfig, page: Path | None = None) -> list[str]:
    evaluation = files.read_json(metrics_dir / "eval.json") or {}
    train = files.read_json(metrics_dir / "train.json") or {}
    ok = sum(s["verdict"] == "ok" for s in evaluation.get("songs", []))
    lines = [f"New songs in {generated}/ (audio + spectrogram PNG), {ok} of "
             f"{len(evaluation.get('songs', []))} judged ok:"]
    lines += song_lines(evaluation)
    if train.get("val_loss") is not None:
        ratio = train.get("ratio_to_best_baseline")
        lines.append(f"Model: {model} (best epoch {train.get('best_epoch')}, val_loss "
                     f"{train['val_loss']:.4g}"
                     + (f" = {ratio:.2f}x the best trivial predictor)" if ratio else ")"))
    lines.append((f"Curves and songs, offline: {page}" if page else
                  f"Curves: {metrics_dir}/train_curve.png") + "   All figures: dvc metrics show")
    lines.append(f"Next: make ui, then open {ui_address(tracking, port)}")
    return [piece for line in lines
            for piece in (textwrap.wrap(line, WIDTH, subsequent_indent="    ") or [""])]


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def html_page(metrics_dir: Path, generated: Path, page: Path) -> str:
    """The run's curves and songs as one self-contained page (no script, no network)."""
    evaluation = files.read_json(metrics_dir / "eval.json") or {}
    train = files.read_json(metrics_dir / "train.json") or {}
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>rawtune: the last run"
             "</title><style>body{font-family:sans-serif;max-width:60em;margin:auto}"
             "td,th{padding:.2em .6em;text-align:left;vertical-align:top}"
             "img{max-width:100%}</style></head><body><h1>The last run</h1>"]
    curve = metrics_dir / "train_curve.png"
    if train:
        parts.append(f"<p>Best epoch {train.get('best_epoch')} of {train.get('epochs_run')}, "
                     f"val_loss {esc(str(train.get('val_loss')))}.</p>")
    if curve.is_file():
        parts.append(f"<h2>Training</h2><img alt='loss per epoch' src='{png_uri(curve)}'>")
    parts.append("<h2>New songs</h2><table><tr><th>song</th><th>verdict</th><th>why</th></tr>")
    for s in evaluation.get("songs", []):
        parts.append(f"<tr><td>{esc(s['file'])}</td><td>{esc(s['verdict'])}</td>"
                     f"<td>{esc(s['reason'])}</td></tr>")
    parts.append("</table>")
    for s in evaluation.get("songs", []):
        song, picture = generated / s["file"], (generated / s["file"]).with_suffix(".png")
        parts.append(f"<h3>{esc(s['file'])}: {esc(s['verdict'])}</h3>"
                     f"<audio controls src='{esc(os.path.relpath(song, page.parent))}'></audio>")
        if picture.is_file():
            parts.append(f"<img alt='spectrogram of {esc(s['file'])}' src='{png_uri(picture)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def main(args) -> None:
    params = config.load_params(args.params)
    tracking = config.TrackingConfig.from_params(params)
    if args.ui_address:
        print(ui_address(tracking, args.port))
        return
    page = Path(args.html) if args.html else None
    if page is not None:
        with files.atomic_path(page) as tmp:
            tmp.write_text(html_page(Path(args.metrics), Path(args.generated), page))
    print("\n".join(summary(Path(args.metrics), Path(args.generated), Path(args.model),
                            args.port, tracking, page)))


def build_parser():
    parser = config.stage_parser(__doc__)
    parser.add_argument("--metrics", default="metrics", help="metrics folder (default: %(default)s)")
    parser.add_argument("--generated", default="data/generated",
                        help="the generated songs (default: %(default)s)")
    parser.add_argument("--model", default="models/model.keras",
                        help="the trained model (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000,
                        help="the port `make ui` serves on (default: %(default)s)")
    parser.add_argument("--ui-address", action="store_true",
                        help="print only the address of the MLflow runs table")
    parser.add_argument("--html", metavar="PAGE",
                        help="also write the run as a self-contained page (e.g. "
                             "metrics/report.html)")
    return parser


if __name__ == "__main__":
    config.cli(main, build_parser())
