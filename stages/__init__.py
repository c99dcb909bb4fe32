"""The pipeline's stages. Each runs as `python -m stages.<name>` from dvc.yaml, with whatever
`python` comes first on PATH: a user who typed `.venv/bin/dvc repro` without activating the venv
gets the system's Python, which lacks the project's libraries. Then the stage starts again in the
project's own `.venv` when there is one, and otherwise says in one sentence how to get one, never
a ModuleNotFoundError traceback per stage.

Written for any Python 3 (it runs before anything is known about the interpreter).
"""
import importlib.util
import os
import sys
from pathlib import Path

NEEDED = ("numpy", "yaml", "soundfile")     # looked up, not imported: a few milliseconds
_AGAIN = "RAWTUNE_STAGE_IN_VENV"


def _missing():
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def _ensure_environment():
    missing = _missing()
    if not missing:
        return
    venv_python = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    argv = list(getattr(sys, "orig_argv", []))      # Python 3.10+: the command as typed
    if venv_python.is_file() and "-m" in argv and not os.environ.get(_AGAIN):
        os.environ[_AGAIN] = "1"                    # once: a broken venv says so below
        sys.stderr.flush()                          # `-m stages.x args`, without the other
        os.execv(str(venv_python), [str(venv_python)] + argv[argv.index("-m"):])  # Python's flags
    sys.stderr.write(
        "error: this Python ({}) lacks the project's libraries ({}); activate the project's "
        "environment: `source .venv/bin/activate` (`make setup` makes it), or use `make demo`.\n"
        .format(sys.executable, ", ".join(missing)))
    sys.exit(1)


_ensure_environment()
