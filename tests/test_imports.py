"""The import boundaries of DESIGN.md's "Layers".

1. `import parasim.simulator, parasim.planner` and the app layer's modules never import torch.
   Runs in a fresh interpreter so that nothing imported by other tests can hide or cause a torch
   import. Every submodule is imported (found with pkgutil). Besides checking sys.modules
   afterwards, a meta-path hook records every attempt to import torch, so a guarded
   `try: import torch except ImportError` counts too on machines where torch is not installed.
2. The layers import one way: simulator <- planner <- runtime <- app (each may import only the
   layers before it), read from every module's import statements, lazy ones included.
3. After install nothing of ours is importable under a generic top-level name.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import importlib, json, pkgutil, sys

    attempts = []

    class RecordTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                attempts.append(name)
            return None

    sys.meta_path.insert(0, RecordTorch())

    import parasim.simulator, parasim.planner

    imported = []
    for package in (parasim.simulator, parasim.planner):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    for info in pkgutil.iter_modules(parasim.__path__, "parasim."):
        if not info.ispkg and info.name != "parasim.__main__":
            importlib.import_module(info.name)
            imported.append(info.name)

    print(json.dumps({
        "imported": imported,
        "attempts": attempts,
        "torch_modules": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
    }))
""")

# Each layer and the layers it may import (DESIGN.md: each line may import only those above it).
LAYERS = {"simulator": set(), "planner": {"simulator"}, "runtime": {"simulator", "planner"},
          "app": {"simulator", "planner", "runtime", "profiles"}}
PACKAGE_OF = {"parasim.simulator": "simulator", "parasim.planner": "planner",
              "parasim.runtime": "runtime", "parasim.profiles": "profiles"}


def test_simulator_planner_and_app_modules_never_import_torch():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    # The walk found the modules (the test is not vacuous) ...
    assert "parasim.simulator.predict" in report["imported"]
    assert "parasim.planner.search" in report["imported"]
    assert "parasim.cli" in report["imported"]
    assert any(name.startswith("parasim.simulator.cost.") for name in report["imported"])
    # ... and none of them reached for torch.
    assert report["torch_modules"] == []
    assert report["attempts"] == []


def _imported_layers(path: Path) -> set[str]:
    """The layers a module's import statements (anywhere in it) name."""
    layers = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            for prefix, layer in PACKAGE_OF.items():
                if name == prefix or name.startswith(prefix + "."):
                    layers.add(layer)
            if name.split(".")[0] in {"simulator", "planner", "runtime", "profiles", "app"}:
                layers.add("generic top-level name " + name)
    return layers


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_one_way(layer):
    folder = REPO / layer
    checked = 0
    for path in sorted(folder.rglob("*.py")):
        allowed = LAYERS[layer] | {layer} | {"profiles"}
        wrong = _imported_layers(path) - allowed
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"
        checked += 1
    assert checked > 3


def test_no_generic_top_level_packages_after_install(tmp_path):
    """A `simulator.py`, `runtime.py` and `profiles/` in the working folder shadow nothing."""
    (tmp_path / "simulator.py").write_text("raise SystemExit('the local simulator.py')\n")
    (tmp_path / "runtime.py").write_text("raise SystemExit('the local runtime.py')\n")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "__init__.py").write_text("raise SystemExit('local profiles')\n")
    code = ("import importlib.util, parasim.cli, parasim.simulator.catalog as c; "
            "print(c.gpu('h100-sxm').name); "
            "print([n for n in ('planner', 'app') if importlib.util.find_spec(n)])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["h100-sxm", "[]"]
