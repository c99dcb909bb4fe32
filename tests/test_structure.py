"""The code's shape, checked so it cannot drift: each DVC stage's `deps` are exactly the project
modules its command imports (directly or through other modules, at the top or inside a function),
no function in stages/ or flows/ is longer than a screen, and audio files are opened in one
module only."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

MAX_FUNCTION_LINES = 60


def imported_modules(path: Path) -> set[str]:
    """The `stages.*` modules a file imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stages.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "stages":
                found |= {f"stages.{a.name}" for a in node.names}
            elif node.module.startswith("stages."):
                found.add(node.module)
    return found


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += imported_modules(ROOT / (name.replace(".", "/") + ".py"))
    return seen


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(stages()))
def test_a_stages_code_deps_are_exactly_its_import_closure(stage):
    spec = stages()[stage]
    module = re.search(r"python -m (stages\.\w+)", spec["cmd"]).group(1)
    closure = {f"{m.replace('.', '/')}.py" for m in import_closure(module)}
    declared = {d for d in spec["deps"] if d.startswith("stages/") and d.endswith(".py")}
    assert declared == closure, (f"dvc.yaml '{stage}' deps: missing {sorted(closure - declared)}, "
                                 f"not imported {sorted(declared - closure)}")


def test_the_closure_follows_imports_inside_functions(tmp_path):
    # generate imports plots and tracking inside functions; both must count
    assert {"stages.plots", "stages.tracking"} <= import_closure("stages.generate")


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_in_stages_or_flows_is_longer_than_a_screen():
    long = [f"{p.relative_to(ROOT)}:{name} ({n} lines)"
            for folder in ("stages", "flows") for p in sorted((ROOT / folder).glob("*.py"))
            for name, n in functions(p) if n > MAX_FUNCTION_LINES]
    assert long == []


def test_only_the_audio_module_opens_audio_files():
    pattern = re.compile(r"^\s*(import soundfile|import soxr|from soundfile|from soxr)", re.M)
    users = [str(p.relative_to(ROOT)) for folder in ("stages", "flows", "tests", "bench")
             for p in sorted((ROOT / folder).glob("*.py")) if pattern.search(p.read_text())]
    assert users == ["stages/audio.py"]


def test_the_flows_run_every_stage_of_dvc_yaml_in_its_order():
    from flows.project import STAGES
    assert list(STAGES) == list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
