"""Repository hygiene: notebooks committed clean, the environment pinned, seqlib usable without
Triton (macOS laptops have none)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for folder in ("book", "solutions", "exercises") for p in (ROOT / folder).glob("*.ipynb")
)
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks_to_check():
    assert CHAPTERS, "no chapter notebooks found under book/"
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_committed_without_outputs_and_with_the_python3_kernel(path):
    nb = json.loads(path.read_text())
    with_outputs = [i for i, c in enumerate(nb["cells"])
                    if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not with_outputs, f"{path.name}: cells {with_outputs} carry outputs (run nbstripout)"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: kernelspec must be 'python3', got {nb['metadata'].get('kernelspec')}"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_imports_seqlib_and_seeds(path):
    source = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                       if c["cell_type"] == "code")
    assert re.search(r"^\s*(import seqlib|from seqlib)", source, re.M), f"{path.name}: no seqlib"
    assert "seed_everything(" in source, f"{path.name}: does not seed its random generators"


def test_every_requirement_is_pinned():
    text = (ROOT / "requirements.txt").read_text()
    lines = [ln.split("#")[0].strip() for ln in text.splitlines()]
    unpinned = [ln for ln in lines if ln and not re.match(r"^[A-Za-z0-9_.\-\[\]]+==[\w.+]+", ln)]
    assert not unpinned, f"requirements.txt lines without an exact pin: {unpinned}"
    assert any(ln.startswith("jupyter-book==1.") for ln in lines), "Jupyter Book must stay 1.x"


def test_seqlib_imports_and_runs_without_triton():
    # A finder that refuses triton stands in for a machine where it is not installed.
    script = """
import importlib, pkgutil, sys
class NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("triton is not installed here")
sys.meta_path.insert(0, NoTriton())
import seqlib
# every module but the kernels themselves (seqlib/ops/*/triton_*.py), which need triton
names = [m.name for m in pkgutil.walk_packages(seqlib.__path__, "seqlib.")
         if not m.name.endswith("__main__") and not m.name.rsplit(".", 1)[-1].startswith("triton_")]
for name in names:
    importlib.import_module(name)
assert "triton" not in sys.modules
print(len(names))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) >= 5
