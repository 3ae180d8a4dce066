"""Package layering: facerec.gallery sits below eval and serve; eval never imports serve.
Checked on the source (every import statement, function-level ones included) and by importing
the eval modules in a fresh interpreter and listing what got loaded."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "facerec"


def _imports(package: str) -> dict[str, set[str]]:
    """module file -> every module it imports (absolute names)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT.parent))] = names
    return out


@pytest.mark.parametrize("package, forbidden", [("eval", ("facerec.serve",)), ("gallery", ("facerec.serve", "facerec.eval"))])
def test_no_upward_imports_in_source(package, forbidden):
    bad = {f: sorted(n for n in names if n.startswith(forbidden)) for f, names in _imports(package).items()}
    bad = {f: n for f, n in bad.items() if n}
    assert bad == {}, f"facerec.{package} imports {forbidden}: {bad}"


def test_importing_eval_loads_no_serve_module():
    mods = [f"facerec.eval.{p.stem}" for p in sorted((ROOT / "eval").glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('facerec.serve', 'facerec.gallery'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = eval(out.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith("facerec.serve")], loaded
    assert "facerec.gallery" in loaded  # eval builds and reads galleries through the package
