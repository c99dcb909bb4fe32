"""Background services the product starts (a Prefect server, Prefect's temporary API, `mlflow ui`
in the tests): wait until one answers, give a slow start one more try, and stop it with everything
it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable, TypeVar

T = TypeVar("T")
EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API"


class DidNotStart(Exception):
    """The service exited, or did not answer in time; the message says which."""


def wait_until_serving(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Poll `url` until it answers 200; raise DidNotStart when `proc` exits first or time runs
    out (a loaded machine needs a generous `timeout_s`)."""
    import httpx
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise DidNotStart(f"it exited with status {proc.returncode} before {url} answered")
        if time.monotonic() > deadline:
            raise DidNotStart(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Stop a process started with `start_new_session=True` and everything it started: SIGTERM
    to its process group, SIGKILL after `timeout_s`."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class ApiDidNotStart(Exception):
    """Prefect's temporary API did not answer in time, twice; the message says what to do."""


def with_temporary_api(call: Callable[[], T], timeout_s: int) -> T:
    """Run `call` (a flow) with Prefect's own start-up timeout of its temporary API set to
    `timeout_s` (flows.startup_timeout_s). A start that times out (a busy machine: Prefect's own
    default is 20 s) is stopped and tried once more; a second one raises ApiDidNotStart with the
    way out, never Prefect's traceback. With PREFECT_API_URL set no temporary API is started."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
    for attempt in (1, 2):
        try:
            with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout_s}):
                return call()
        except RuntimeError as err:
            if EPHEMERAL_TIMEOUT not in str(err):
                raise
            SubprocessASGIServer().stop()          # the slow one: the retry starts afresh
            if attempt == 1:
                print(f"Prefect's temporary API did not start within {timeout_s} s (a busy "
                      "machine?); trying once more.", file=sys.stderr, flush=True)
    raise ApiDidNotStart(
        f"Prefect's temporary API did not start within {timeout_s} s, twice (the machine is "
        "busy); raise flows.startup_timeout_s in params.yaml, or start a Prefect server (`make "
        "serve`) and set PREFECT_API_URL=http://127.0.0.1:4200/api before running the flow.")
