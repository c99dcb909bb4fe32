"""Scheduled retraining: when songs or params changed, run the pipeline, then let the new model
(challenger) take the registry's `champion` alias only if it beats the current champion on the
current validation songs (flows.metric, by at least flows.min_improvement).

    python -m flows.retrain               # once, now (no Prefect server needed)
    python -m flows.retrain serve         # serve the deployment on the flows.schedule cron
    make serve                            # starts a local Prefect server, then serves

`serve` needs a Prefect server (`PREFECT_API_URL`): Prefect's ephemeral API cannot schedule
runs. `make serve` starts `prefect server start` on 127.0.0.1 and points the deployment at it;
the Prefect UI then lists the deployment, its schedule and its runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from flows.pipeline import not_user_error, only_transient, pipeline
from flows.project import (RunInProgress, changed_stages, load_params, retry_settings,
                           startup_timeout)
from flows.services import (ApiDidNotStart, DidNotStart, stop_group, wait_until_serving,
                            with_temporary_api)
from prefect import flow, get_run_logger, task

from stages import config, registry
from stages.config import TrackingConfig, UserError


@task(name="dvc-status", retry_condition_fn=only_transient)
def changed_stages_task(project: str) -> list[str]:
    """The stages DVC would run: songs, params or code changed since the last run."""
    return changed_stages(Path(project))


def has_champion(params: dict, project: Path) -> bool:
    tracking = TrackingConfig.from_params(params).rooted(project)
    return registry.champion_version(registry.client_for(tracking.uri),
                                     tracking.model_name) is not None


@task(name="promote", retry_condition_fn=not_user_error)
def promote_task(project: str) -> dict:
    from flows import champion
    root = Path(project)
    return champion.promote(root, load_params(root))


@flow(name="rawtune-retrain", log_prints=True)
def retrain(project: str = ".") -> dict:
    """Retrain when something changed; promote the challenger only when it wins."""
    log = get_run_logger()
    root = Path(project).resolve()
    params = load_params(root)
    retries, delay = retry_settings(params)
    changed = changed_stages_task.with_options(retries=retries,
                                               retry_delay_seconds=delay)(str(root))
    if not changed and has_champion(params, root):
        log.info("nothing changed since the last run (no new songs, same params); the champion "
                 "stays.")
        return dict(changed=[], ran=[], decision="nothing changed")
    log.info("changed: %s", ", ".join(changed) or "nothing, but there is no champion yet")
    summary = pipeline(project=str(root))
    decision = promote_task.with_options(retries=retries, retry_delay_seconds=delay)(str(root))
    return dict(changed=changed, ran=summary["ran"], mlflow_run_id=summary["mlflow_run_id"],
                verdicts=summary["verdicts"], **decision)


@contextmanager
def local_server(port: int, timeout_s: float):
    """`prefect server start` on 127.0.0.1:`port` for as long as the block runs; its API URL is
    put in PREFECT_API_URL. The server's log goes to .prefect-server.log."""
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_API_URL=api)
    prefect = Path(sys.executable).with_name("prefect")
    with open(".prefect-server.log", "w") as out:
        server = subprocess.Popen([str(prefect) if prefect.is_file() else "prefect", "server",
                                   "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        try:
            wait_until_serving(f"{api}/health", server, timeout_s)
        except DidNotStart as err:
            raise UserError(f"The Prefect server did not start on 127.0.0.1:{port} ({err}; is the "
                            "port taken, or the machine busy? flows.startup_timeout_s in "
                            "params.yaml is the wait); its log is in .prefect-server.log.") from err
        print(f"Prefect server on http://127.0.0.1:{port} (UI and API); log: "
              ".prefect-server.log", flush=True)
        os.environ["PREFECT_API_URL"] = api
        yield api
    finally:
        stop_group(server)


def serve(project: Path) -> None:
    """Serve the retraining deployment on the cron in params until interrupted."""
    if not os.environ.get("PREFECT_API_URL"):
        raise UserError("`serve` needs a Prefect server: run `make serve`, or start `prefect "
                        "server start` and set PREFECT_API_URL (the ephemeral API cannot "
                        "schedule runs).")
    params = load_params(project)
    cron = config.param(params, "flows.schedule", str)
    name = config.param(params, "flows.deployment", str)
    retrain.serve(name=name, cron=cron, parameters={"project": str(project.resolve())},
                  description="Retrain on new songs or params; promote the champion only when "
                              "the challenger wins.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("run", "serve"), default="run",
                        help="run: retrain once now (default); serve: serve the scheduled "
                             "deployment")
    parser.add_argument("--project", default=".", help="project root (default: current folder)")
    parser.add_argument("--local-server", type=int, metavar="PORT",
                        help="serve: first start a Prefect server on 127.0.0.1:PORT (as `make "
                             "serve` does), stopped again on exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        timeout_s = startup_timeout(load_params(args.project))   # bad params: told at once
        if args.command == "serve":
            with (local_server(args.local_server, timeout_s) if args.local_server
                  else nullcontext()):
                serve(Path(args.project))
            return 0
        result = with_temporary_api(lambda: retrain(project=args.project), timeout_s)
    except (UserError, RunInProgress, ApiDidNotStart) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
