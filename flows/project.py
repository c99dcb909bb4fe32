"""The project as the flows see it: its params, the paths its dvc.yaml declares, and every call
of the `dvc` command line (repro, status), with the one way a held DVC lock is recognised.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from stages import config
from stages.config import UserError

STAGES = ("decode", "wav_to_npy", "fft_blocks", "tensors", "codebook", "train", "generate",
          "evaluate")
LOCK_MESSAGE = "Unable to acquire lock"
BUSY = ("another run is in progress in {project} (the DVC lock is held); "
        "wait for it to finish, or delete .dvc/tmp/lock if no DVC process is running.")


class RunInProgress(Exception):
    """Another DVC process holds the project's lock: worth retrying."""


def load_params(project: str | Path) -> dict:
    return config.load_params(Path(project) / config.PARAMS_FILE)


def check_audio_folder(project: str | Path, params: dict) -> None:
    """The one sentence decode would say about a missing or empty audio folder, said before DVC
    tries to hash it (DVC's own words are a bare `[Errno 2]`)."""
    from stages.decode import list_audio_candidates
    raw_dir = Path(config.param(params, "data.raw_dir", str))
    list_audio_candidates(raw_dir if raw_dir.is_absolute() else Path(project) / raw_dir)


def retry_settings(params: dict) -> tuple[int, float]:
    return (config.param(params, "flows.retries", int, minimum=0),
            config.param(params, "flows.retry_delay_s", (int, float), minimum=0))


def startup_timeout(params: dict) -> int:
    """flows.startup_timeout_s: seconds a Prefect API (the temporary one, or `make serve`'s
    server) may take to start on a busy machine."""
    return config.param(params, "flows.startup_timeout_s", int, minimum=1)


# --- what dvc.yaml declares ---------------------------------------------------------------------

def _declared(entries: list) -> list[str]:
    """dvc.yaml outs/metrics entries (a path, or {path: options}) -> their paths."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


@dataclass(frozen=True)
class Paths:
    """The outputs the flows read, where the project's dvc.yaml puts them."""
    tensors: Path           # the tensors stage's folder
    train_metrics: Path     # train's summary: model version, MLflow run
    eval_metrics: Path      # evaluate's verdicts
    codebook: Path          # the codebook stage's folder

    @classmethod
    def of(cls, project: str | Path) -> "Paths":
        root = Path(project)
        try:
            stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
            return cls(root / _declared(stages["tensors"]["outs"])[0],
                       root / _declared(stages["train"]["metrics"])[0],
                       root / _declared(stages["evaluate"]["metrics"])[0],
                       root / _declared(stages["codebook"]["outs"])[0])
        except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as err:
            raise UserError(f"'{root / 'dvc.yaml'}' does not declare the tensors and codebook "
                            f"folders and the train and evaluate metrics ({type(err).__name__}); restore it from "
                            "git.") from err


# --- DVC's own lock files after a kill -------------------------------------------------------------
# DVC rewrites dvc.lock and .dvc/tmp/rwlock in place (truncate, then write): a kill -9 of `dvc` in
# that moment leaves an empty file and every later `dvc` stops. `repair` mends that before each
# `dvc` call here, and `python -m flows.repair` does it for a user of plain `dvc`.

def _unreadable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return False
    except (OSError, ValueError):
        return path.exists()


def _unreadable_yaml(path: Path) -> bool:
    try:
        return not isinstance(yaml.safe_load(path.read_text()), dict)
    except OSError:
        return False                                 # no dvc.lock yet: nothing to repair
    except yaml.YAMLError:
        return True


def _committed(project: Path, name: str) -> bytes | None:
    proc = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=project, capture_output=True)
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


def repair(project: str | Path) -> list[str]:
    """Fix what a kill of `dvc` left of its lock files; returns a sentence per fix (none when
    nothing needed it). Raises RunInProgress while another DVC process runs."""
    from dvc.lock import LockError, make_lock
    root = Path(project).resolve()
    tmp = root / ".dvc" / "tmp"
    if not tmp.is_dir():
        return []
    lock = make_lock(str(tmp / "lock"), tmp_dir=str(tmp))
    try:
        lock.lock()
    except LockError as err:
        raise RunInProgress(BUSY.format(project=root)) from err
    fixed = []
    try:
        rwlock = tmp / "rwlock"
        if _unreadable_json(rwlock):
            rwlock.unlink()
            fixed.append(f"removed the unreadable {rwlock.relative_to(root)} (DVC was killed "
                         "while writing it)")
        dvc_lock = root / "dvc.lock"
        if _unreadable_yaml(dvc_lock):
            committed = _committed(root, "dvc.lock")
            if committed is not None:
                dvc_lock.write_bytes(committed)
                fixed.append("restored the empty dvc.lock from git (DVC was killed while "
                             "writing it); the stages changed since that commit run again")
            else:
                dvc_lock.unlink()
                fixed.append("removed the empty dvc.lock (DVC was killed while writing it); "
                             "every stage runs again, and finished songs are kept")
    finally:
        lock.unlock()
    return fixed


# --- the dvc command line -----------------------------------------------------------------------

def dvc_executable() -> str:
    """The `dvc` beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.is_file() else "dvc"


def stage_error(output: str, stage: str) -> str:
    """The stage's own one-sentence error ("error: ..."), else DVC's, else a generic sentence."""
    lines = [line.strip() for line in output.splitlines()]
    ours = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if ours:
        return ours[-1]
    dvcs = [line[len("ERROR: "):] for line in lines if line.startswith("ERROR: ")]
    return dvcs[-1] if dvcs else f"stage '{stage}' failed; its output is above."


def run_dvc(args: list[str], project: Path, on_line=None) -> str:
    """`dvc <args>` in `project` with this venv first on PATH (the stages' `python`); each output
    line goes to `on_line` as it comes. Returns the output; a held lock raises RunInProgress,
    any other failure UserError with the stage's (or DVC's) one sentence. What an earlier kill of
    DVC left of its own lock files is repaired first (flows/repair.py)."""
    for fixed in repair(project):
        logging.getLogger("rawtune").warning("repaired: %s.", fixed)
    env = dict(os.environ, DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.Popen([dvc_executable(), *args], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        line = line.rstrip("\r\n")
        lines.append(line)
        if on_line is not None and line.strip():
            on_line(line.split("\r")[-1])
    proc.wait()
    output = "\n".join(lines)
    if proc.returncode != 0:
        if LOCK_MESSAGE in output:
            raise RunInProgress(BUSY.format(project=project))
        raise UserError(stage_error(output, args[-1]))
    return output


def repro_stage(stage: str, project: Path, log) -> bool:
    """`dvc repro --single-item <stage>`, its output relayed to `log`. Returns whether the stage
    ran (False: DVC found it up to date)."""
    output = run_dvc(["repro", "--single-item", stage], project,
                     lambda line: log.info("%s | %s", stage, line))
    return f"Running stage '{stage}'" in output


def changed_stages(project: Path) -> list[str]:
    """The stages DVC would run: songs, params or code changed since the last run."""
    output = run_dvc(["status", "--json"], project)
    found = [line for line in output.splitlines() if line.startswith("{")]   # not a warning
    return sorted(name.split(":")[-1] for name in json.loads(found[-1]) if found)
