"""Package layering, measured on the import graph of the source: every ``import`` and ``from ...
import`` statement of every module under facerec/ (ast; function-level imports included), each
name resolved to the module that defines it.

The packages sit on floors, lowest first (:data:`FLOORS`, read from the code). A module imports
modules of its own floor or of lower ones, never of a higher one, so each floor can be read,
tested and replaced knowing only the floors below it. On top sits the command layer
(``facerec.cli``): no library module imports it; ``pipelines/*.py`` and the console script do.
Besides, no two modules import each other, directly or around a loop, when they are imported:
the import cycles are measured on the module-level imports (the statements that run at import,
so neither a function's deferred import nor an ``if TYPE_CHECKING:`` one).

A fresh interpreter confirms two of these at run time: importing every eval module loads no
serve module, and importing the library loads no command.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "facerec"

# (floor, the packages and top-level modules on it), lowest first. Each may import what is on its
# own floor or below. Within a floor imports go both ways between packages (never between modules
# in a loop, see test_no_import_cycle_between_modules):
# - data, detect and models share one: preprocessing runs the detectors (data.cropper ->
#   detect), the study's detector wraps the cascade of data.haar (detect.haar -> data.haar), MTCNN
#   runs on ONNX Runtime through models.onnx_runtime, a model's calibration records the detector
#   it was measured with (models.calibration -> detect), a backbone names its input kind
#   (models -> data.inputs).
# - train and gallery, and eval and cluster, do not import each other: they share a floor only
#   because neither is above the other.
FLOORS: list[tuple[str, set[str]]] = [
    ("foundation", {"facerec", "errors", "registry", "io", "progress", "ray_utils"}),
    ("kernels", {"dlibport", "index", "losses", "metrics"}),
    ("inputs, detectors and models", {"data", "detect", "models"}),
    ("training and galleries", {"train", "gallery"}),
    ("evaluation and clustering", {"eval", "cluster"}),
    ("serving", {"serve"}),
    ("the whole run", {"run"}),
    ("commands", {"cli"}),
]
FLOOR_OF = {unit: i for i, (_, units) in enumerate(FLOORS) for unit in units}
COMMANDS = len(FLOORS) - 1


def _modules() -> dict[str, Path]:
    """module name -> file, for every module under facerec/."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The facerec module that ``name`` (a module, or a name imported from one) is or lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(module: str, nodes) -> set[str]:
    """The facerec modules the import statements among ``nodes`` name (relative ones resolved)."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            # ``from P import x``: x is a submodule of P or a name defined in P
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "facerec" and (target := _resolve(name)) and target != module:
                out.add(target)
    return out


def import_graph(at_import_only: bool = False) -> dict[str, set[str]]:
    """module -> the facerec modules it imports: every import statement, or with
    ``at_import_only`` the ones that run when the module is imported (module level, outside
    functions, classes and ``if TYPE_CHECKING:``)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        if at_import_only:
            skip = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            nodes = [n for stmt in tree.body if not isinstance(stmt, skip) and not _is_type_checking(stmt)
                     for n in ast.walk(stmt)]
        else:
            nodes = list(ast.walk(tree))
        graph[module] = _imported(module, nodes)
    return graph


def unit(module: str) -> str:
    """The package or top-level module a module belongs to (``facerec.eval.tables`` -> ``eval``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def floor(module: str) -> int:
    # ``python -m facerec.PACKAGE`` entry points are commands that only sit in their package's folder
    return COMMANDS if module.endswith(".__main__") else FLOOR_OF[unit(module)]


def is_library(module: str) -> bool:
    return unit(module) != "cli" and not module.endswith(".__main__")


def upward_imports() -> list[str]:
    graph = import_graph()
    return sorted(f"{a} -> {b} (floor {floor(a)} -> {floor(b)})"
                  for a, targets in graph.items() for b in targets if floor(b) > floor(a))


def library_imports_of_the_cli() -> list[str]:
    graph = import_graph()
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if is_library(a)
                  for b in targets if unit(b) == "cli")


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's graph walk): every
    module of one imports every other, directly or around a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def measured() -> dict[str, int]:
    """The counts the tests below assert on, for a report: ``python -c "import runpy;
    print(runpy.run_path('tests/test_layering.py')['measured']())"``."""
    graph = import_graph()
    return {
        "modules": len(MODULES),
        "imports between facerec modules": sum(map(len, graph.values())),
        "imports between floors, downward": sum(floor(b) < floor(a) for a, t in graph.items() for b in t),
        "imports up a floor": len(upward_imports()),
        "library imports of facerec.cli": len(library_imports_of_the_cli()),
        "import cycles at import (module level)": len(import_cycles(import_graph(at_import_only=True))),
        "modules in cycles of deferred imports too": sum(map(len, import_cycles(graph))),
    }


def test_every_package_has_a_floor():
    units = {unit(m) for m in MODULES}
    assert units - set(FLOOR_OF) == set(), "place the new package on a floor in FLOORS"
    assert set(FLOOR_OF) - units == set(), "FLOORS names a package that no longer exists"


def test_no_import_runs_up_a_floor():
    assert upward_imports() == []


def test_no_library_module_imports_the_cli():
    assert library_imports_of_the_cli() == []


def test_no_import_cycle_between_modules():
    assert import_cycles(import_graph(at_import_only=True)) == []


def test_the_graph_sees_what_it_checks():
    """The measurement itself: a function-level import, a relative one and a ``from P import
    submodule`` are edges; an upward one, a cycle and a command import would be found."""
    graph = import_graph()
    assert "facerec.gallery.embed" in graph["facerec.gallery.build"]  # function level (the ray engine)
    assert "facerec.models.dlib_resnet" in graph["facerec.models.backbones"]
    assert "facerec.cli.gallery" in graph["facerec.gallery.__main__"]  # the shim, a command
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor("facerec.eval.tables") > floor("facerec.gallery.build") > floor("facerec.models.pretrained")
    assert floor("facerec.cli.main") > floor("facerec.run") > floor("facerec.serve.app")


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


@pytest.mark.slow  # imports torch, torchvision, Ray and Serve: about 20 s on 2 CPUs
def test_importing_the_library_loads_no_command():
    mods = sorted(m for m in MODULES if is_library(m))
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'facerec.cli' or m.startswith('facerec.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
