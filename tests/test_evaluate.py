"""The evaluate stage's figures on signals whose answer is known, the verdicts they lead to, and a
real `dvc repro evaluate` that writes metrics/eval.json and adds them to the training run."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from stages import audio, evaluate, files, quality, synth
from stages.config import AudioConfig
from tests.conftest import ROOT, assert_one_line_error, run, run_stage, set_params, write_song

RATE, BLOCK = 44100, 2048
SECONDS = 12


def song(seed: int) -> np.ndarray:
    return synth.make_song(seed, SECONDS).mean(axis=1).astype(np.float64)


@pytest.fixture(scope="module")
def reference():
    train = [song(s) for s in (1, 2, 3)]
    val = [song(s) for s in (4, 5)]
    return evaluate.Reference(val, train, RATE, BLOCK), train


@pytest.fixture(scope="module")
def thresholds():
    import yaml
    return evaluate.Thresholds.from_params(yaml.safe_load((ROOT / "params.yaml").read_text()))


def judged(reference, thresholds, x):
    ref, _ = reference
    fig = ref.judge(x)
    return fig, evaluate.verdict(fig, ref.figures, thresholds)


def test_calibration_puts_real_music_far_closer_than_noise(reference):
    ref, _ = reference
    c = ref.figures
    assert c["fd_frames_real"] * 5 < c["fd_frames_noise"]
    assert c["fd_texture_real"] * 5 < c["fd_texture_noise"]
    assert 5 < c["dynamics_real"] < 25 and c["tonal_real"] > 0.05


def test_silence_is_silent(reference, thresholds):
    fig, (name, reason) = judged(reference, thresholds, np.zeros(SECONDS * RATE))
    assert fig["silent_fraction"] == 1.0 and name == "silent" and "silent_fraction 1.00" in reason


def test_white_noise_is_noise(reference, thresholds):
    ref, train = reference
    level = 10 ** (quality.level_dbfs(train[0]) / 20)
    noise = np.random.default_rng(1).normal(0, level, SECONDS * RATE)
    fig, (name, reason) = judged(reference, thresholds, noise)
    assert fig["flatness"] > 0.4 and fig["fd_frames_closer_to"] == "noise"
    assert name == "noise" and "flatness" in reason


def test_a_training_song_is_a_copy(reference, thresholds):
    _, train = reference
    fig, (name, reason) = judged(reference, thresholds, train[1])
    assert fig["copy_score"] < 0.2 and name == "copy" and "copy score" in reason


def test_nearest_distance_searches_every_reference_row_block_by_block():
    rng = np.random.default_rng(0)
    queries, reference = rng.normal(size=(700, 12)), rng.normal(size=(900, 12))
    exact = np.sqrt(((queries[:, None] - reference[None]) ** 2).sum(-1)).min(axis=1).mean()
    for chunk in (64, 333, 4096):                 # blocks smaller than, and larger than, both
        assert quality.nearest_distance(queries, reference, chunk) == pytest.approx(exact,
                                                                                   rel=1e-5)
    assert np.isnan(quality.nearest_distance(queries[:0], reference))


def test_a_stretch_of_a_training_song_is_a_copy_wherever_it_starts(thresholds):
    """A copy is found however much training music there is (6 songs of 30 s here, 7,700
    frames) and wherever the stretch starts (off the frame grid); a new song made of the same
    sounds in a new order is not one."""
    train = [synth.make_song(s, 30).mean(axis=1).astype(np.float64) for s in range(10, 16)]
    ref = evaluate.Reference([song(4), song(5)], train, RATE, BLOCK, SECONDS)
    start = int(17.37 * RATE)
    fig = ref.judge(train[5][start:start + SECONDS * RATE])
    name, reason = evaluate.verdict(fig, ref.figures, thresholds)
    assert fig["copy_score"] < 0.4 and name == "copy" and "copy score" in reason
    # the same song's 1 s pieces shuffled: every frame a training frame, no passage a copy
    pieces = train[5][:SECONDS * RATE].reshape(SECONDS, RATE)
    shuffled = pieces[np.random.default_rng(0).permutation(SECONDS)].ravel()
    assert ref.judge(shuffled)["copy_score"] > thresholds.copy_score


def test_a_held_out_song_is_ok(reference, thresholds):
    fig, (name, reason) = judged(reference, thresholds, song(9))
    assert name == "ok", reason
    assert 0.6 < fig["copy_score"] < 1.6 and fig["fd_frames_closer_to"] == "real"


def test_a_static_drone_and_a_quiet_smear_are_caught(reference, thresholds):
    t = np.arange(SECONDS * RATE) / RATE
    drone = 0.3 * sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((110, 220, 330), 1))
    fig, (name, reason) = judged(reference, thresholds, drone)
    assert fig["dynamics_db"] < 1 and name == "static" and "dynamics" in reason
    smear = np.random.default_rng(2).normal(0, 0.003, len(t))
    smear = np.convolve(smear, np.ones(64) / 8, mode="same")         # quiet, dull, toneless
    fig, (name, _) = judged(reference, thresholds, smear)
    assert name == "quiet" and fig["level_vs_train_db"] < -12


def test_the_real_songs_are_judged_the_same_way(thresholds):
    t = np.arange(SECONDS * RATE) / RATE
    drone = 0.3 * sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((110, 220, 330), 1))
    ref = evaluate.Reference([song(4), song(5)], [song(1), drone, song(3)], RATE, BLOCK,
                             song_seconds=SECONDS)
    real = ref.judge_real(["v4", "v5"], ["t1", "drone", "t3"], thresholds)
    assert [(r["song"], r["split"], r["verdict"]) for r in real] == [
        ("v4", "val", "ok"), ("v5", "val", "ok"), ("t1", "train", "ok"),
        ("drone", "train", "static"), ("t3", "train", "ok")]
    assert "dynamics" in real[3]["reason"] and real[3]["dynamics_db"] < 1
    # each validation song against the other one, on a stretch as long as a generated song
    v4 = song(4)[:ref.song_frames * quality.HOP]
    alone = ref.distances(quality.log_mel(v4, RATE), ref.val_mel[1:])["fd_frames"]
    assert real[0]["fd_frames"] == pytest.approx(alone, rel=1e-3)
    assert evaluate.count_verdicts(real) == {"ok": 4, "static": 1}


def test_clicks_at_every_block_edge_are_measured():
    rng = np.random.default_rng(3)
    blocks = [np.sin(2 * np.pi * rng.uniform(200, 800) * np.arange(BLOCK) / RATE
                     + rng.uniform(0, 6)) * 0.3 for _ in range(200)]
    clicky = np.concatenate(blocks)                                   # a jump at each joint
    smooth = 0.3 * np.sin(2 * np.pi * 440 * np.arange(len(clicky)) / RATE)
    assert quality.click_ratio(clicky, RATE, BLOCK) > 3
    assert quality.click_ratio(smooth, RATE, BLOCK) == pytest.approx(1, abs=0.2)


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_shift():
    a = np.random.default_rng(0).normal(size=(500, 4))
    assert quality.frechet(a, a) == pytest.approx(0, abs=1e-3)
    assert quality.frechet(a, a + 1) == pytest.approx(4, rel=0.05)


def test_missing_inputs_are_one_sentence(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "gen").mkdir()
    proc = run_stage("evaluate", ["--data", str(ROOT / "tests"), "--generated",
                                  str(tmp_path / "gen")], tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "run `dvc repro tensors` first" in proc.stderr
    (tmp_path / "data").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"split": ["val"], "song_id": ["a"]}), tmp_path / "data/music_index.parquet")
    proc = run_stage("evaluate", ["--data", str(tmp_path / "data"), "--generated",
                                  str(tmp_path / "gen")], tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "No generated songs in" in proc.stderr and "run `dvc repro generate` first" in proc.stderr


def test_songs_of_a_model_made_for_other_audio_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"split": ["val"], "song_id": ["a"]}), data / "music_index.parquet")
    files.write_json(data / "music_audio.json", AudioConfig(44100, 32768, 1024, "full").as_dict())
    write_song(tmp_path / "gen" / "song_01.wav", 1, 0.5, channels=1)
    files.write_json(tmp_path / "generate.json", {
        "model": "models:/rawtune/3", "audio": AudioConfig(44100, 32768, 2048, "rfft").as_dict()})
    proc = run_stage("evaluate", ["--data", "data", "--generated", "gen", "--metrics", "e.json",
                                  "--generate-metrics", "generate.json"], tmp_path, check=False)
    assert_one_line_error(proc, "The model 'models:/rawtune/3' was trained on other audio "
                                "settings than the data in 'data' (model vs data: "
                                "fft_blocks.block_size 2048 vs 1024; fft_blocks.fft 'rfft' vs "
                                "'full')")
    assert not (tmp_path / "e.json").exists()


@pytest.mark.slow
def test_repro_evaluate_writes_eval_json_and_adds_to_the_training_run(trained):
    set_params(trained / "params.yaml", {"generate.seconds": 3, "generate.n_songs": 2,
                                         "evaluate.reference_seconds": 10,
                                         "generate.min_copy": 9,    # every song drawn again
                                         "generate.seed_max_fd": 0})  # from the other song
    proc = run(["dvc", "repro", "evaluate"], trained)
    assert "Traceback" not in proc.stderr and "calibration: frame FD real" in proc.stderr
    ev = json.loads((trained / "metrics/eval.json").read_text())
    # generate.min_copy: each song was drawn again from the other song, and the less copied of
    # its two draws kept; generate's copy score is evaluate's
    made = json.loads((trained / "metrics/generate.json").read_text())
    for i, (s, m) in enumerate(zip(ev["songs"], made["songs"])):
        assert f"generate.min_copy: song_{i + 1:02d} copy score {m['copy_score_first']:.2f}" \
            in proc.stderr
        again = re.search(rf"song_{i + 1:02d} copy score [\d.]+ \(grown from [^)]+\) < 9: drawn "
                          rf"again from [^,]+, ([\d.]+); the (new|first) draw kept", proc.stderr)
        assert again, proc.stderr
        # the less copied of the two draws is the one kept, written and judged
        assert m["copy_score_drawn"] == pytest.approx(max(m["copy_score_first"],
                                                          float(again.group(1))), abs=0.006)
        assert m["drawn_again"] == (again.group(2) == "new")
        assert m["drawn_again"] == (m["copy_score_drawn"] > m["copy_score_first"])
        assert s["copy_score"] == pytest.approx(m["copy_score_drawn"], abs=0.02)
    assert [s["file"] for s in ev["songs"]] == ["song_01.wav", "song_02.wav"]
    verdicts = ("ok", "silent", "quiet", "noise", "static", "smear", "clicks", "copy", "loop",
                "same")
    for s in ev["songs"]:
        assert s["verdict"] in verdicts and s["reason"]
        assert s["verdict"] in proc.stderr
    # the real songs' own verdicts, by their file names; each new song names the song it grew
    # from and that song's verdict
    import pyarrow.parquet as pq
    rows = pq.read_table(trained / "data/interim/manifest.parquet").to_pylist()
    names = {r["id"]: r["path"] for r in rows}
    names_seconds = {r["path"]: r["seconds"] for r in rows}
    assert sorted(r["file"] for r in ev["real_songs"]) == sorted(names.values())
    assert all(r["verdict"] in verdicts for r in ev["real_songs"])
    assert sum(ev["real_verdicts"].values()) == len(names)
    for r in ev["real_songs"]:
        assert f"real song {r['file']} ({r['split']}): {r['verdict']}" in proc.stderr
    real = {r["file"]: r for r in ev["real_songs"] if r["split"] == "train"}
    for s in ev["songs"]:                 # and how far it is from the validation songs beside it
        source = real[s["grows_from"]]
        assert source["verdict"] == s["grows_from_verdict"]
        for key in ("fd_frames", "fd_texture", "tonal_fraction"):
            assert s[f"{key}_vs_source"] == pytest.approx(s[key] / source[key], rel=1e-2)
        assert s["dynamics_db_vs_source"] == pytest.approx(
            s["dynamics_db"] - source["dynamics_db"], abs=0.02)
        # and its source's whole body, in windows as long as a new song (3 s) every 5 s
        seconds = names_seconds[s["grows_from"]]
        assert s["grows_from_windows"] == max(1, int((seconds - 3) // 5) + 1)
        assert s["dynamics_db_vs_source_body"] == pytest.approx(
            s["dynamics_db"] - s["grows_from_dynamics_db_median"], abs=0.02)
        assert 0 <= s["grows_from_static_windows"] <= s["grows_from_windows"]
        assert s["fails_like_its_source"] == (s["verdict"] == "static" and 2 * s[
            "grows_from_static_windows"] >= s["grows_from_windows"] or s["verdict"] == "smear"
            and 2 * s["grows_from_smear_windows"] >= s["grows_from_windows"])
    assert [(s["replayed_longest_s"], s["replayed_share"]) for s in ev["songs"]] == [
        (s["replayed_longest_s"], s["replayed_share"]) for s in made["songs"]]
    assert ev["mean_dynamics_db_vs_source"] == pytest.approx(
        np.mean([s["dynamics_db_vs_source"] for s in ev["songs"]]), abs=1e-3)
    train = json.loads((trained / "metrics/train.json").read_text())
    assert ev["val_loss"] == train["val_loss"] and ev["baselines"] == train["baselines"]
    from mlflow import MlflowClient
    c = MlflowClient(f"sqlite:///{trained / 'mlflow.db'}")
    r = c.get_run(train["mlflow_run_id"])
    assert r.data.metrics["eval_calibration_fd_frames_noise"] == pytest.approx(
        ev["calibration"]["fd_frames_noise"])
    assert "eval.song_01.wav" in r.data.tags
    assert r.data.metrics["generate_copy_score_min"] == min(m["copy_score_drawn"]
                                                            for m in made["songs"])
    assert r.data.metrics["generate_drawn_again"] == sum(m["drawn_again"] for m in made["songs"])
    assert {a.path for a in c.list_artifacts(r.info.run_id, "evaluation")} == {
        "evaluation/eval.json"}
    shown = run(["dvc", "metrics", "show", "--json"], trained).stdout
    assert "metrics/eval.json" in shown


def test_a_still_body_behind_a_lively_intro_is_seen_in_its_windows(thresholds):
    """A source judged on its first window only looks lively when that window is its intro;
    its windows through the whole song show the still body a new song grows from, and a
    `static` new song's reason says so."""
    rate = 8000
    t = np.arange(50 * rate) / rate
    tone = sum(np.sin(2 * np.pi * 110 * k * t) / k for k in range(1, 36)) / 4  # 35 harmonics
    x = tone * np.where((t < 10) & ((t % 1) >= 0.5), 0.04, 1.0)   # pulsing 28 dB, then held
    assert quality.dynamics_db(x[:10 * rate]) > 20
    body_fig = evaluate.source_body(x, rate, 10, thresholds)
    assert body_fig["grows_from_windows"] == 9                # 10 s windows every 5 s in 50 s
    assert body_fig["grows_from_static_windows"] == 7         # all but the two that hold intro
    assert body_fig["grows_from_dynamics_db_median"] < thresholds.static_db
    assert body_fig["grows_from_tonal_median"] > thresholds.smear_tonal
    assert body_fig["grows_from_smear_windows"] == 0
    result = dict(verdict="static", grows_from="song.ogg", **body_fig)
    assert evaluate.like_its_source(result) == (
        "; so are 7 of the 9 windows of song.ogg it grew from", True)
    assert evaluate.like_its_source(dict(result, grows_from_static_windows=4)) == (
        "; so are 4 of the 9 windows of song.ogg it grew from", False)     # not its typical stretch
    assert evaluate.like_its_source(dict(result, verdict="ok")) == ("", False)
    assert evaluate.like_its_source(dict(result, verdict="smear")) == ("", False)   # tonal windows
    assert evaluate.typical_window_fails(body_fig, thresholds).startswith(
        "static (the median of its windows breathes")


def test_a_whole_songs_frame_figures_a_slice_at_a_time_are_those_of_all_at_once(monkeypatch):
    """A whole song's levels and tonal chunks are computed a few thousand frames at a time (an
    hour-long song's frames would be 1.2 GB); slices of 5 frames give the same numbers bit for
    bit as one slice of the whole song, from float64 or from the float32 a memory map holds."""
    rate = 8000
    t = np.arange(50 * rate + 777) / rate
    x = np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.3 * t)) / 3
    x[5 * rate:7 * rate] = 0                                        # a silent stretch
    x32 = x.astype(np.float32)
    monkeypatch.setattr(quality, "SLICE_FRAMES", 10 ** 9)
    whole = (quality.frame_dbfs(x32), quality.tonal_chunks(x32, rate),
             quality.window_figures(x32, rate, 10, 5))
    monkeypatch.setattr(quality, "SLICE_FRAMES", 5)
    for y in (x32, x32.astype(np.float64)):
        assert np.array_equal(quality.frame_dbfs(y), whole[0])
        assert len(whole[0]) == quality.n_frames(y) == (len(y) - quality.FRAME) // quality.HOP + 1
        assert np.array_equal(quality.tonal_chunks(y, rate), whole[1], equal_nan=True)
        assert np.isnan(whole[1]).any() and (whole[1][np.isfinite(whole[1])] > 0).all()
        figures = quality.window_figures(y, rate, 10, 5)
        assert all(np.array_equal(figures[k], whole[2][k]) for k in whole[2])
    short = x32[:1000]                                               # shorter than one frame
    assert quality.frame_dbfs(short).shape == (1,) and quality.n_frames(short) == 1


def test_a_stretch_played_over_and_over_is_a_loop(reference, thresholds):
    stretch = song(9)[RATE:2 * RATE]                              # 1 s of a held-out song
    tiled = np.tile(stretch, SECONDS)
    fig, (name, reason) = judged(reference, thresholds, tiled)
    assert fig["loop_score"] < 0.1 and name == "loop" and "over and over" in reason
    fig, (name, _) = judged(reference, thresholds, song(9))       # the song itself moves on
    assert fig["loop_score"] > 0.3 and name == "ok"
    ref, _ = reference
    assert ref.figures["loop_real_min"] > thresholds.loop_score


def test_songs_that_do_not_differ_from_each_other_are_the_same(reference, thresholds, tmp_path):
    ref, _ = reference
    made = {"song_01.wav": song(9), "song_02.wav": song(9) * 0.99,        # one song twice
            "song_03.wav": song(10)}
    for name, x in made.items():
        audio.write(tmp_path / name, x.astype(np.float32), RATE)
    results = {r["file"]: r for r in evaluate.judge_songs(sorted(tmp_path.glob("*.wav")), ref,
                                                           thresholds)}
    assert ref.figures["songs_apart_real"] > 0
    for name in ("song_01.wav", "song_02.wav"):
        other = "song_02.wav" if name == "song_01.wav" else "song_01.wav"
        assert results[name]["verdict"] == "same" and results[name]["nearest_song"] == other
        assert results[name]["nearest_song_fd"] < 0.01 * ref.figures["songs_apart_real"]
        assert other in results[name]["reason"]
    assert results["song_03.wav"]["verdict"] == "ok", results["song_03.wav"]["reason"]
    assert results["song_03.wav"]["nearest_song_fd"] > thresholds.same_vs_real * \
        ref.figures["songs_apart_real"]


def test_a_song_as_near_as_the_real_songs_is_never_noise(reference, thresholds):
    # a real song far from the validation songs (a dull, muffled one) is in the calibration, so
    # neither it nor a new song like it is noise; white noise still is
    muffle = lambda x: np.convolve(x, np.ones(200) / 200, mode="same")   # noqa: E731
    val, train = [song(4), song(5)], [song(1), song(2), muffle(song(3))]
    ref = evaluate.Reference(val, train, RATE, BLOCK)
    assert ref.figures["fd_frames_real_max"] > 1.5 * ref.figures["fd_frames_real"]
    real = ref.judge_real(["v4", "v5"], ["t1", "t2", "muffled"], thresholds)
    assert [r["verdict"] for r in real] == ["ok"] * 5
    like = ref.judge(muffle(song(9)))
    assert like["fd_frames"] > 1.3 * ref.figures["fd_frames_real"]
    assert like["fd_frames_closer_to"] == "real", like
    level = 10 ** (quality.level_dbfs(train[0]) / 20)
    noise = ref.judge(np.random.default_rng(1).normal(0, level, SECONDS * RATE))
    assert noise["fd_frames_closer_to"] == "noise"
    # a corpus of unlike songs (jingles beside long tracks) can put the real songs' distance as
    # far from the validation songs as noise's: a song nearer than both is still music
    ref, _ = reference
    saved = dict(ref.figures)
    try:
        ref.figures.update(fd_frames_real_max=saved["fd_frames_noise"] + 1.0,
                           fd_texture_real_max=saved["fd_texture_noise"] + 1.0)
        fig, (name, reason) = judged(reference, thresholds, song(9))
        assert fig["fd_frames_closer_to"] == fig["fd_texture_closer_to"] == "real"
        assert name == "ok", reason
        # the farthest real song decides, not the median: a song nearer noise than the median
        # but within the farthest real song is real; beyond it and nearer noise, noise
        d = {k: fig[k] for k in ("fd_frames", "fd_texture")}
        for real_max, expected in ((1.1, "real"), (0.5, "noise")):
            for k, v in d.items():
                ref.figures.update({f"{k}_real": v / 100, f"{k}_noise": 1.2 * v,
                                    f"{k}_real_max": real_max * v})
            fig = ref.judge(song(9))
            assert fig["fd_frames_closer_to"] == fig["fd_texture_closer_to"] == expected
    finally:
        ref.figures.clear()
        ref.figures.update(saved)


@pytest.mark.parametrize("n", [10, 300, 2048, 5000, 44100])
def test_the_run_spectrograms_and_frames_are_scipy_signals_without_importing_it(n):
    """The PNGs' spectrogram and evaluate's frames are computed in numpy (importing scipy.signal
    costs every stage that draws or judges ~1 s) and equal what scipy.signal gives."""
    from scipy import signal
    from stages.plots import power_spectrogram
    x = np.random.default_rng(n).normal(size=n)
    nper = min(2048, max(16, n))
    expected = signal.spectrogram(np.pad(x, (0, max(0, 16 - n))), fs=22050, window="hann",
                                  nperseg=nper, noverlap=nper * 3 // 4)
    for got, want in zip(power_spectrogram(x, 22050), expected):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    frames = quality.frames(x)
    np.testing.assert_allclose(quality.power_frames(x), np.abs(np.fft.rfft(
        frames * signal.get_window("hann", quality.FRAME), axis=1)) ** 2 / quality.FRAME,
        rtol=1e-9, atol=1e-15)
