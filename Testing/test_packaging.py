"""The pip package ships every engine sub-package and the model catalogue; the engine stays Slicer-free."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_engine_package_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "LinGuinELib").rglob("__init__.py")}
    assert on_disk <= set(config["packages"])
    assert config["package-dir"]["LinGuinELib.Resources"] == "Resources"
    assert (REPO / "Resources" / "models.json").is_file()


def test_engine_never_imports_slicer_qt_ctk_or_vtk():
    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk|PythonQt|mrml)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "LinGuinELib").rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_engine_core_imports_nothing_from_io_front_ends_or_research():
    """The core (scans, tracking, measurements) depends only on itself and the two backend interfaces."""
    allowed = re.compile(r"^LinGuinELib(\.core(\.\w+)?|\.registration\.base|\.segmentation\.base)?$")
    pattern = re.compile(r"^\s*(?:from|import)\s+(LinGuinELib[\w.]*)", re.M)
    offenders = [(p.name, m) for p in (REPO / "LinGuinELib" / "core").glob("*.py")
                 for m in pattern.findall(p.read_text(encoding="utf-8")) if not allowed.match(m)]
    assert offenders == []


def _module_imports() -> dict[str, set[str]]:
    """LinGuinELib module -> the LinGuinELib modules it imports at module level (imports inside functions
    run later, so they cannot form an import-time cycle)."""
    import ast

    def name(path: Path) -> str:
        parts = path.relative_to(REPO).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(p): p for p in (REPO / "LinGuinELib").rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        found = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[module] = {m for m in found if m in modules and m != module}
    return graph


def test_no_import_cycles_between_engine_modules():
    graph = _module_imports()
    assert graph["LinGuinELib.frontend.session"] >= {"LinGuinELib.core.measure"}  # the scan sees imports
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
