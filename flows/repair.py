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
import json
import subprocess
import sys
from pathlib import Path

import yaml

from flows.project import BUSY, RunInProgress


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
