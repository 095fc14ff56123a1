"""`import simulator, planner` never imports torch (DESIGN.md, "Layers").

Runs in a fresh interpreter so that nothing imported by other tests can hide or cause a torch
import. Every submodule of both packages is imported (found with pkgutil). Besides checking
sys.modules afterwards, a meta-path hook records every attempt to import torch, so a guarded
`try: import torch except ImportError` counts too on machines where torch is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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

    import simulator, planner

    imported = []
    for package in (simulator, planner):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
            imported.append(info.name)

    print(json.dumps({
        "imported": imported,
        "attempts": attempts,
        "torch_modules": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
    }))
""")


def test_simulator_and_planner_never_import_torch():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    # The walk found the modules (the test is not vacuous) ...
    assert "simulator.predict" in report["imported"]
    assert "planner.cli" in report["imported"]
    assert any(name.startswith("simulator.cost.") for name in report["imported"])
    # ... and none of them reached for torch.
    assert report["torch_modules"] == []
    assert report["attempts"] == []
