"""Background services the product starts (a Prefect server, `mlflow ui` in the tests): wait until
one answers, and stop it with everything it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time


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
