"""The whole pipeline as a Prefect flow: one task per DVC stage, run in order through the `dvc`
command line, so DVC alone decides what is up to date and the stage logic lives only in stages/.

    python -m flows.pipeline              # run every stage that is out of date
    python -m flows.pipeline --help

A transient fault (the DVC lock held by another run) is retried `flows.retries` times, waiting
`flows.retry_delay_s` between attempts; a user's mistake (bad params, no usable audio) fails the
flow at once with the stage's one sentence. No Prefect server is needed: the flow runs on
Prefect's ephemeral API. The flow returns (and logs) a summary: what ran, what was up to date,
the MLflow run id, the evaluation verdicts.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from prefect import flow, get_run_logger, task          # noqa: E402
from prefect.runtime import task_run as current_task   # noqa: E402

from flows.project import (STAGES, Paths, RunInProgress, check_audio_folder,  # noqa: E402
                           load_params, repro_stage, retry_settings, startup_timeout)
from flows.services import ApiDidNotStart, with_temporary_api  # noqa: E402
from stages import files                                # noqa: E402
from stages.config import UserError                     # noqa: E402

class NoTracebackForUserErrors(logging.Filter):
    """Prefect logs every failed flow and task run with its traceback; for a user's mistake or a
    held lock the one sentence is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (UserError, RunInProgress)):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(NoTracebackForUserErrors())


def only_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry a held lock, never a user's mistake."""
    try:
        state.result()
    except RunInProgress:
        return True
    except Exception:
        return False
    return False


def not_user_error(task, task_run, state) -> bool:
    """Prefect retry condition: retry anything (a tracking server briefly down) but a user's
    mistake, which fails at once with its sentence."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:
        return True
    return False


@task(name="dvc-stage", task_run_name="{stage}", retry_condition_fn=only_transient)
def stage_task(stage: str, project: str) -> dict:
    log = get_run_logger()
    t0 = time.perf_counter()
    ran = repro_stage(stage, Path(project), log)
    seconds = round(time.perf_counter() - t0, 1)
    log.info("%s: %s in %.1f s", stage, "ran" if ran else "up to date", seconds)
    return dict(stage=stage, ran=ran, seconds=seconds, attempts=current_task.run_count)


def summarise(project: Path, results: list[dict]) -> dict:
    paths = Paths.of(project)
    train = files.read_json(paths.train_metrics) or {}
    evaluation = files.read_json(paths.eval_metrics) or {}
    return dict(
        ran=[r["stage"] for r in results if r["ran"]],
        up_to_date=[r["stage"] for r in results if not r["ran"]],
        attempts={r["stage"]: r["attempts"] for r in results},
        seconds={r["stage"]: r["seconds"] for r in results},
        mlflow_run_id=train.get("mlflow_run_id"),
        model_version=train.get("model_version"),
        val_loss=train.get("val_loss"),
        verdicts={s["file"]: s["verdict"] for s in evaluation.get("songs", [])},
    )


@flow(name="rawtune-pipeline", log_prints=True)
def pipeline(project: str = ".", stages: list[str] | None = None) -> dict:
    """Run the DVC stages in order (all of them unless `stages` names some); DVC skips what is
    up to date. Returns the summary."""
    log = get_run_logger()
    root = Path(project).resolve()
    params = load_params(root)
    retries, delay = retry_settings(params)
    unknown = [s for s in stages or () if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}.")
    if "decode" in (stages or STAGES):
        check_audio_folder(root, params)
    step = stage_task.with_options(retries=retries, retry_delay_seconds=delay)
    results = [step(stage, str(root)) for stage in (stages or STAGES)]
    summary = summarise(root, results)
    log.info("ran: %s; up to date: %s; MLflow run %s; verdicts: %s",
             ", ".join(summary["ran"]) or "nothing", ", ".join(summary["up_to_date"]) or "nothing",
             summary["mlflow_run_id"] or "none",
             ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items()) or "none")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=".", help="project root (default: current folder)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, metavar="STAGE",
                        help=f"run only these stages, in order ({', '.join(STAGES)})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.project)          # mistakes are told before Prefect starts
        retry_settings(params)
        if "decode" in (args.stages or STAGES):
            check_audio_folder(args.project, params)
        summary = with_temporary_api(lambda: pipeline(project=args.project, stages=args.stages),
                                     startup_timeout(params))
    except (UserError, RunInProgress, ApiDidNotStart) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
