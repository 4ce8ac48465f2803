"""Every script in benchmarks/ runs: `python -m benchmarks.<name> --help` exits 0 and prints its usage, without
importing TensorFlow (a script imports its heavy libraries when it measures, not to say how it is called).

The scripts are found, not listed: any benchmarks/*.py with a `__main__` block is a script, so a new one is
covered the day it is added. They are run the way benchmarks/README.md says, as modules of the `benchmarks`
package from the repository root (shared helpers such as standin.py are plain imports; no sys.path changes),
and they reach the runtime only through its public names (`tumor_edge.runtime`), in their own code and in the
code they hand to child processes alike: the import contracts cannot see a string.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
MAIN_BLOCK = re.compile(r'^if __name__ == "__main__":', re.M)


def scripts() -> list[str]:
    return sorted(p.stem for p in BENCHMARKS.glob("*.py") if MAIN_BLOCK.search(p.read_text()))


def test_the_scripts_are_found():
    found = scripts()
    assert "run_suite" in found and "standin" not in found and "proctree" not in found, found
    assert (BENCHMARKS / "__init__.py").is_file()


@pytest.mark.parametrize("name", scripts())
def test_help_runs_without_tensorflow(name):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"benchmarks.{name}", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and name in result.stdout.splitlines()[0], result.stdout[:500]
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")]
    heavy = sorted({m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "torch")})
    assert not heavy, f"--help imported {heavy[:5]}"


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_no_path_hacks_and_only_the_runtimes_public_names(path):
    text = path.read_text()
    assert not re.search(r"sys\.path\.(insert|append)", text), f"{path.name} changes sys.path"
    internal = sorted(set(re.findall(r"tumor_edge\.runtime\.\w+", text)))
    # a docstring may name a module it measures; code (and code strings for child processes) imports the API
    imports = [m for m in internal if re.search(rf"(from|import) {re.escape(m)}\b", text)]
    assert not imports, f"{path.name} imports runtime internals {imports}; use `from tumor_edge.runtime import ...`"
