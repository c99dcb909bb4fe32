"""The README's first steps and the MLflow UI as a person sees them: `make demo` on a fresh clone
with tiny params, the next steps it prints, its model promoted to `champion`, then `mlflow ui` (the
command `make ui` runs) on a free loopback port, opened in headless Chromium (Debian's, driven by
playwright; nothing downloads a browser). Screenshots go to the test's tmp dir.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flows import champion
from flows.services import stop_group
from stages import config, report
from stages.config import TrackingConfig
from tests.conftest import (BIN, ROOT, SMALL_PARAMS, TINY_TRAIN, env, free_port, run,
                            set_params, wait_until_serving)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY_DEMO = {**SMALL_PARAMS, **TINY_TRAIN, "demo.songs": 3, "demo.min_seconds": 3,
             "demo.max_seconds": 4, "generate.seconds": 2, "generate.n_songs": 2,
             "evaluate.reference_seconds": 3}
VENV = Path(sys.executable).parent.parent



@pytest.fixture(scope="module")
def promoted(tmp_path_factory) -> Path:
    """The README's first steps on a fresh clone: `git clone`, then `make demo` with tiny params
    (its output in demo.out), and the model it trained given the `champion` alias. The clone
    reuses this test run's virtual environment (`make demo VENV=...`); building one from the
    lock file is what `make test` itself does on CI's fresh machine."""
    clone = tmp_path_factory.mktemp("ui") / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    set_params(clone / "params.yaml", TINY_DEMO)
    demo = subprocess.run(["make", "demo", f"VENV={VENV}"], cwd=clone, env=env(),
                          capture_output=True, text=True, timeout=900)
    (clone / "demo.out").write_text(demo.stdout)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "Traceback" not in demo.stdout + demo.stderr
    decision = champion.promote(clone, config.load_params(clone / "params.yaml"))
    assert decision["decision"] == "promoted"
    return clone


@pytest.fixture(scope="module")
def ui(promoted: Path):
    """`make ui` on the demo's clone, on a free loopback port (the command the demo's summary
    names), shared by this file's tests; stopped with its job workers. Its terminal output is
    in ui.log beside the clone."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = promoted.parent / "ui.log"
    proc = subprocess.Popen(["make", "ui", f"VENV={VENV}", f"MLFLOW_PORT={port}"], cwd=promoted,
                            env=env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until_serving(f"{base}/health", proc, log=log)
        yield base
    finally:
        stop_group(proc, 5)             # keep-alive connections hold a graceful stop ~10 s


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed and `make test` "
                                             "could not install it (it needs root)")
def test_mlflow_ui_shows_runs_params_curves_champion_and_audio(promoted, ui, tmp_path):
    from playwright.sync_api import sync_playwright

    train = json.loads((promoted / "metrics" / "train.json").read_text())
    run_id, version = train["mlflow_run_id"], train["model_version"]
    run_info = httpx.get(f"{ui}/api/2.0/mlflow/runs/get", params={"run_id": run_id}).json()
    exp, run_name = run_info["run"]["info"]["experiment_id"], run_info["run"]["info"]["run_name"]
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        def show(name: str, url: str, expect: str) -> str:
            """Open `url`, wait until `expect` is rendered, save a screenshot, return the text."""
            page.goto(url)
            page.get_by_text(expect, exact=True).first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=shots / f"{name}.png", full_page=True)
            return page.inner_text("body")

        # the page `make ui` sends a newcomer to: the training runs, no click needed
        cfg = TrackingConfig(f"sqlite:///{promoted / 'mlflow.db'}", "rawtune", "rawtune", 10)
        landing = report.ui_address(cfg, int(ui.rsplit(":", 1)[1]))
        assert landing == f"{ui}/#/experiments/{exp}/runs"
        runs = show("landing", landing, run_name)
        assert "rawtune" in runs and f"v{version}" in runs          # run listed with its model

        show("run", f"{ui}/#/experiments/{exp}/runs/{run_id}", "val_loss")
        # the run page's tables are virtualised: find each row through the table's search box
        for box, names in (("Search metrics", ("loss", "val_loss", "baseline_repeat_last",
                                               "eval_songs_ok", "eval_mean_fd_frames")),
                           ("Search parameters", ("train.hidden", "train.cell",
                                                  "fft_blocks.block_size"))):
            for name in names:
                page.get_by_placeholder(box).first.fill(name)
                page.get_by_text(name, exact=True).first.wait_for(timeout=15_000)
        page.screenshot(path=shots / "run-search.png")

        show("curves", f"{ui}/#/experiments/{exp}/runs/{run_id}/model-metrics",
             "baseline_repeat_last")
        page.mouse.move(600, 600)                   # charts render as they scroll into view
        for _ in range(60):
            if page.get_by_text("val_loss", exact=True).count():
                break
            page.mouse.wheel(0, 600)
            page.wait_for_timeout(250)
        chart = page.get_by_text("val_loss", exact=True).first
        chart.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=shots / "curves-val_loss.png")
        assert page.locator("canvas, svg").count() > 0

        show("model", f"{ui}/#/models/rawtune/versions/{version}", "rawtune.decision")
        model = page.inner_text("body")
        aliases = model[model.index("Aliases"):model.index("Stage")]
        assert f"Version {version}" in model and "champion" in aliases, aliases
        assert "promoted" in model                                  # the decision tag's value

        show("artifacts", f"{ui}/#/experiments/{exp}/runs/{run_id}/artifacts", "generated")
        page.get_by_text("generated", exact=True).first.click()
        page.get_by_text("song_01.wav", exact=True).first.click()
        page.locator("audio").first.wait_for(timeout=30_000)
        page.screenshot(path=shots / "audio.png")
        page.get_by_text("song_01.png", exact=True).first.click()
        page.wait_for_function("[...document.images].some(i => i.src.startsWith('blob:') "
                               "&& i.naturalWidth > 100)", timeout=30_000)
        page.screenshot(path=shots / "spectrogram.png")
        browser.close()
    assert sorted(p.name for p in shots.iterdir()) == [
        "artifacts.png", "audio.png", "curves-val_loss.png", "curves.png", "landing.png",
        "model.png", "run-search.png", "run.png", "spectrogram.png"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed and `make test` "
                                             "could not install it (it needs root)")
def test_the_run_page_shows_curves_songs_and_verdicts_with_the_network_off(promoted, tmp_path):
    from playwright.sync_api import sync_playwright
    run([str(BIN / "python"), "-m", "stages.report", "--html", "metrics/report.html"], promoted)
    page_path = promoted / "metrics" / "report.html"
    assert "<script" not in page_path.read_text()
    evaluation = json.loads((promoted / "metrics" / "eval.json").read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(offline=True)
        page = context.new_page()
        failed = []
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        text = page.inner_text("body")
        for song in evaluation["songs"]:
            assert song["file"] in text and song["verdict"] in text
        sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(sizes) == 1 + len(evaluation["songs"]) and min(sizes) > 100  # curve + songs
        audio_ok = page.eval_on_selector_all(
            "audio", "els => els.map(a => a.src.startsWith('file:'))")
        assert audio_ok == [True] * len(evaluation["songs"])
        page.screenshot(path=tmp_path / "report.png", full_page=True)
        browser.close()
    assert failed == []


@pytest.mark.slow
def test_fresh_clone_make_demo_then_its_next_steps_work(promoted, ui):
    clone = promoted
    said = (clone / "demo.out").read_text()
    out = said[said.index("New songs in data/generated/"):].splitlines()
    # the summary ends with the next command; once in three CI runs a line of ~106 characters
    # came after it, from a process other than the summary's (not reproduced since)
    summary = out[:next(i for i, line in enumerate(out) if line.startswith("Next: make ui")) + 1]
    assert max(len(line) for line in summary) <= 80, [l for l in summary if len(l) > 80]
    songs = sorted(p.name for p in (clone / "data/generated").iterdir())
    assert songs == ["song_01.png", "song_01.wav", "song_02.png", "song_02.wav"]
    evaluation = json.loads((clone / "metrics/eval.json").read_text())
    assert len(evaluation["songs"]) == 2
    for song in evaluation["songs"]:                                  # every verdict, named
        assert any(song["file"] in line and song["verdict"] in line for line in summary)
    for path in ("models/model.keras", "metrics/report.html"):
        assert path in "\n".join(summary) and (clone / path).exists(), path
    assert summary[-1] == "Next: make ui, then open http://127.0.0.1:5000/#/experiments/1/runs"

    base = ui                                   # `make ui` on this clone (the fixture)
    said_ui = (clone.parent / "ui.log").read_text()
    assert f"MLflow UI, the training runs: {base}/#/experiments/1/runs" in said_ui
    runs = httpx.post(f"{base}/api/2.0/mlflow/runs/search",
                      json={"experiment_ids": ["1"]}, timeout=10).json()["runs"]
    assert [r["info"]["status"] for r in runs] == ["FINISHED"]
