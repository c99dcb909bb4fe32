"""Repair DVC's own state after a kill -9 of `dvc` itself.

DVC rewrites `dvc.lock` and `.dvc/tmp/rwlock` in place (truncate, then write). A kill in that
moment, between two stages, leaves an empty file, and every later `dvc` stops with "'./dvc.lock'
validation failed" or "Unable to read RWLock-file". Our own outputs are never half-written
(stages/files.py); these two files are DVC's.

    python -m flows.repair            # then `dvc repro` again; the flows do this themselves

With no DVC process holding the project's lock, an unreadable rwlock is removed (it only lists
the locks of running DVC processes) and an empty or unreadable `dvc.lock` is restored from git, or
removed when git has none (the stages then run again; the per-song stages keep every finished
song, so they only check them).
"""
from __future__ import annotations

import argparse
import sys

from flows.project import RunInProgress, repair


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.repair", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=".", help="project root (default: current folder)")
    args = parser.parse_args(argv)
    try:
        fixed = repair(args.project)
    except RunInProgress as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(f"repaired: {line}." for line in fixed) or "nothing to repair.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
