"""The Slicer module checked without Slicer: its .ui file and the code agree, parameter-node widgets map
to typed fields, the module compiles and imports no heavy package (stub slicer/qt/ctk/vtk modules),
the CMake lists package every file on disk, and every slicer.util / slicer.packaging /
slicer.parameterNodeWrapper name it uses exists in the Slicer release we target (Testing/slicer_5_12_api.json,
extracted from that release's public sources)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO

MODULE = REPO / "LinGuinE" / "LinGuinE.py"
SCENE_LIB = sorted((REPO / "LinGuinE" / "LinGuinESceneLib").glob("*.py"))
UI = REPO / "Resources" / "UI" / "LinGuinE.ui"
MODULE_CMAKE = REPO / "LinGuinE" / "CMakeLists.txt"
TOP_CMAKE = REPO / "CMakeLists.txt"
API = json.loads((REPO / "Testing" / "slicer_5_12_api.json").read_text())
DOCS = [p for p in (REPO / "README.md",) if p.is_file()]

# Qt Designer classes that need no <customwidget> declaration
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QCheckBox", "QRadioButton", "QComboBox", "QLineEdit",
              "QDoubleSpinBox", "QSpinBox", "QProgressBar", "QTableWidget", "QGroupBox", "QFrame"}


def module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(), filename=str(MODULE))


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def parameter_bindings() -> dict[str, tuple[str, str]]:
    """widget name -> (widget class, SlicerParameterName)"""
    out = {}
    for name, w in ui_widgets().items():
        prop = w.find("property[@name='SlicerParameterName']/string")
        if prop is not None:
            out[name] = (w.get("class"), prop.text)
    return out


def parameter_fields() -> dict[str, str]:
    """Annotated fields of the @parameterNodeWrapper class: name -> annotation source."""
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            return {n.target.id: ast.unparse(n.annotation) for n in node.body if isinstance(n, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in LinGuinE.py")


def attribute_chain(node) -> list[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return parts[::-1]


# -- .ui <-> code ------------------------------------------------------------------------------------
def test_every_ui_widget_the_code_uses_exists_in_the_ui_file():
    used = {chain[2] for node in ast.walk(module_tree()) if isinstance(node, ast.Attribute)
            for chain in [attribute_chain(node)] if chain[:2] == ["self", "ui"] and len(chain) >= 3}
    assert len(used) > 20
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"self.ui names missing from {UI.name}: {missing}"


def test_parameter_widgets_map_to_fields_of_a_matching_type():
    fields = parameter_fields()
    bindings = parameter_bindings()
    assert len(bindings) >= 10
    expected = {  # widget class -> test on the field's annotation (what Slicer's GUI connectors accept)
        "QCheckBox": lambda a: a == "bool",
        "QLineEdit": lambda a: a == "str",
        "QComboBox": lambda a: a.startswith("Annotated[str, Choice("),
        "QDoubleSpinBox": lambda a: a == "float" or a.startswith("Annotated[float"),
        "ctkPathLineEdit": lambda a: a == "pathlib.Path",
        "qMRMLNodeComboBox": lambda a: a.startswith("vtkMRML"),
    }
    for widget, (cls, parameter) in bindings.items():
        assert parameter in fields, f"{widget}: SlicerParameterName '{parameter}' is not a parameter-node field"
        assert cls in expected and expected[cls](fields[parameter]), \
            f"{widget} ({cls}) cannot show field {parameter}: {fields[parameter]}"
    assert len({p for _, p in bindings.values()}) == len(bindings), "two widgets bound to one parameter"


def test_ui_file_declares_custom_widgets_and_gives_mrml_widgets_the_scene():
    root = ET.parse(UI).getroot()
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "LinGuinE")
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    classes = {w.get("class") for w in root.iter("widget")}
    assert classes - QT_CLASSES <= declared, f"undeclared custom widgets: {classes - QT_CLASSES - declared}"
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                       and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {n for n, w in ui_widgets().items() if w.get("class").startswith(("qMRML", "qSlicer")) and n != "LinGuinE"}
    assert mrml and mrml <= scene_receivers, f"MRML widgets without the scene: {mrml - scene_receivers}"


# -- compile and import ------------------------------------------------------------------------------
def test_module_file_defines_what_slicer_loads():
    """Slicer finds a scripted module by its file name: it needs the classes <Name>, <Name>Widget, <Name>Logic
    (and <Name>Test, whose runTest the Reload-and-Test button calls) with the scripted-module bases."""
    import ast

    tree = ast.parse(MODULE.read_text(), str(MODULE))  # a syntax error fails here too
    bases = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    name = MODULE.stem
    assert bases.get(name) == ["ScriptedLoadableModule"]
    assert bases.get(f"{name}Widget", [None])[0] == "ScriptedLoadableModuleWidget"
    assert bases.get(f"{name}Logic") == ["ScriptedLoadableModuleLogic"]
    assert bases.get(f"{name}Test") == ["ScriptedLoadableModuleTest"]
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{name}Test")
    methods = {f.name for f in test_class.body if isinstance(f, ast.FunctionDef)}
    assert {"setUp", "runTest"} <= methods and any(m.startswith("test_") for m in methods)


STUBS = textwrap.dedent('''
    import sys, types

    class Anything:
        """Stand-in for any Qt/VTK/MRML class or object."""
        def __init__(self, *args, **kwargs): pass
        def __getattr__(self, name): return Anything()
        def __call__(self, *args, **kwargs): return Anything()

    class Lenient(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (Anything,), {})

    def add(name, cls=types.ModuleType, **attrs):
        module = cls(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
        return module

    class Base:
        def __init__(self, parent=None):
            self.parent = parent

    class Choice:
        def __init__(self, choices): self.choices = list(choices)

    class WithinRange:
        def __init__(self, low, high): self.low, self.high = low, high

    for name in ("qt", "ctk", "vtk"):
        add(name, Lenient)
    slicer = add("slicer", Lenient)
    slicer.util = add("slicer.util", Lenient, VTKObservationMixin=type("VTKObservationMixin", (), {}))
    slicer.i18n = add("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    slicer.parameterNodeWrapper = add("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
                                      Choice=Choice, WithinRange=WithinRange)
    names = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
             "ScriptedLoadableModuleTest"]
    slicer.ScriptedLoadableModule = add("slicer.ScriptedLoadableModule", __all__=names,
                                        **{n: type(n, (Base,), {}) for n in names})
''')

PROBE = textwrap.dedent('''
    import importlib.util, json, sys, typing
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("LinGuinE", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded = sorted(set(sys.modules) - before)

    class Parent:
        path = sys.argv[1]
    parent = Parent()
    module.LinGuinE(parent)
    fields = {}
    for name, annotation in typing.get_type_hints(module.LinGuinEParameterNode, include_extras=True).items():
        extras = getattr(annotation, "__metadata__", ())
        choices = [c.choices for c in extras if hasattr(c, "choices")]
        fields[name] = {"choices": choices[0] if choices else None,
                        "default": getattr(module.LinGuinEParameterNode, name, None)}
    print(json.dumps({"loaded": loaded, "title": parent.title, "categories": parent.categories,
                      "help": parent.helpText, "ack": parent.acknowledgementText,
                      "dependencies": parent.dependencies, "root": module.ROOT, "resources": module.RESOURCES,
                      "fields": {k: v for k, v in fields.items() if isinstance(v["default"], (str, bool, float, int, type(None)))}}))
''')

HEAVY = ("torch", "torchvision", "numpy", "scipy", "SimpleITK", "skimage", "cc3d", "pydicom", "highdicom",
         "nnInteractive", "nninteractive", "unigradicon", "icon_registration", "itk", "matplotlib", "monai")


@pytest.fixture(scope="module")
def imported():
    """Import LinGuinE.py in a fresh interpreter with stub slicer/qt/ctk/vtk modules."""
    out = subprocess.run([sys.executable, "-c", STUBS + PROBE, str(MODULE)], capture_output=True, text=True,
                         timeout=120, cwd=REPO / "Testing")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_module_imports_no_heavy_package(imported):
    heavy = [m for m in imported["loaded"] if m.split(".")[0] in HEAVY]
    assert not heavy, f"importing LinGuinE.py loaded {heavy}"
    assert "LinGuinELib.backends" in imported["loaded"]  # the stubs did let the real import happen


def test_module_description_and_layout(imported):
    assert imported["title"] == "LinGuinE" and imported["categories"] == ["Segmentation"]
    assert "arXiv:2506.06092" in imported["ack"] and "Garibli" in imported["ack"]
    assert "longitudinal" in imported["help"].lower()
    assert imported["root"] == str(REPO)  # a source checkout finds LinGuinELib and Resources one level up
    assert (REPO / "Resources" / "UI" / "LinGuinE.ui").is_file() and imported["resources"] == str(REPO / "Resources")


def test_parameter_defaults_are_valid_choices(imported):
    from LinGuinELib.backends import REGISTRATIONS, SEGMENTERS

    fields = imported["fields"]
    assert fields["registration"]["choices"] == list(REGISTRATIONS)
    assert fields["segmentation"]["choices"] == list(SEGMENTERS)
    for name, field in fields.items():
        if field["choices"] is not None:
            assert field["default"] in field["choices"], name


# -- packaging ---------------------------------------------------------------------------------------
def cmake_set(text: str, variable: str) -> list[str]:
    match = re.search(r"set\(\s*" + re.escape(variable) + r"\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def test_cmake_lists_match_the_files_on_disk():
    """Derived from disk, so it stays true as files are added: every LinGuinELib *.py/*.json and every
    Resources file must be listed (else it is not packaged), and every listed file must exist."""
    text = MODULE_CMAKE.read_text()
    listed = set(cmake_set(text, "LINGUINE_LIB_SCRIPTS")) | set(cmake_set(text, "LINGUINE_RESOURCES"))
    on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / "LinGuinELib").rglob("*")
               if p.suffix in (".py", ".json") and "__pycache__" not in p.parts}
    on_disk |= {p.relative_to(REPO).as_posix() for p in (REPO / "Resources").rglob("*") if p.is_file()}
    missing, extra = sorted(on_disk - listed), sorted(listed - on_disk)
    assert not missing, "add to LinGuinE/CMakeLists.txt:\n  " + "\n  ".join(missing)
    assert not extra, "listed in LinGuinE/CMakeLists.txt but not on disk:\n  " + "\n  ".join(extra)
    scripts = [s.replace("${MODULE_NAME}", "LinGuinE") for s in cmake_set(text, "MODULE_PYTHON_SCRIPTS")]
    assert scripts[0] == "LinGuinE.py" and len(scripts) == len(set(scripts))
    module_dir = {p.relative_to(MODULE.parent).as_posix() for p in MODULE.parent.rglob("*.py")
                  if "__pycache__" not in p.parts}
    assert "LinGuinESceneLib/results.py" in module_dir
    assert module_dir == set(scripts), (f"module files not packaged: {sorted(module_dir - set(scripts))}; "
                                        f"listed but missing: {sorted(set(scripts) - module_dir)}")
    for call in ("slicerMacroBuildScriptedModule(", "ctkMacroCompilePythonScript(",
                 "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)", "SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/..",
                 "set(MODULE_NAME LinGuinE)"):
        assert call in text, call


def test_extension_metadata():
    text = TOP_CMAKE.read_text()
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert values.get(key), key
    assert values["EXTENSION_CATEGORY"] == "Segmentation" and "PyTorch" in values["EXTENSION_DEPENDS"].split()
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):  # the pictures the URLs point at exist here
        assert (REPO / values[key].split("/raw/main/")[1]).is_file(), key
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(LinGuinE)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line


# -- Slicer API of the targeted release ----------------------------------------------------------------
def slicer_api_uses() -> list[tuple[str, str, list[str], int]]:
    """(module, name, keyword names, "file:line") for slicer.util / slicer.packaging uses in LinGuinE.py
    and its scene layer."""
    uses = []
    for path in [MODULE] + SCENE_LIB:
        uses += [(m, n, k, f"{path.name}:{line}") for m, n, k, line in _api_uses(ast.parse(path.read_text()))]
    return uses


def _api_uses(tree) -> list[tuple[str, str, list[str], int]]:
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("slicer.util", "slicer.packaging",
                                                                "slicer.parameterNodeWrapper"):
            uses += [(node.module, alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.Attribute):
            chain = attribute_chain(node)
            if len(chain) == 3 and chain[0] == "slicer" and chain[1] in ("util", "packaging"):
                uses.append((f"slicer.{chain[1]}", chain[2], [], node.lineno))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            chain = attribute_chain(node.func)
            if len(chain) == 3 and chain[0] == "slicer" and chain[1] in ("util", "packaging"):
                uses.append((f"slicer.{chain[1]}", chain[2], [k.arg for k in node.keywords if k.arg], node.lineno))
    return uses


def test_every_slicer_function_used_exists_in_the_targeted_release():
    uses = slicer_api_uses()
    assert {("slicer.packaging", "pip_ensure"), ("slicer.packaging", "load_requirements")} <= {u[:2] for u in uses}
    for module, name, keywords, line in uses:
        assert not name.startswith("_"), f"line {line}: private API {module}.{name}"
        known = API[module]
        assert name in known, f"line {line}: {module}.{name} does not exist in Slicer {API['tag']}"
        params = known[name] if isinstance(known, dict) else None
        if params and not any(p.startswith("**") for p in params):
            unknown = [k for k in keywords if k not in params]
            assert not unknown, f"line {line}: {module}.{name} has no parameter(s) {unknown} in Slicer {API['tag']}"


def test_the_targeted_release_is_the_one_the_docs_name():
    assert API["tag"].startswith("v" + API["release"]) and re.fullmatch(r"[0-9a-f]{40}", API["commit"])
    assert DOCS, "README.md is missing"
    for doc in DOCS:
        text = doc.read_text()
        if "Slicer" in text:
            assert f"Slicer {API['release']}" in text, f"{doc.name} does not name Slicer {API['release']}"


def test_no_function_rebinds_slicer_qt_or_vtk_as_a_local_name():
    """``import slicer.packaging`` inside a method makes ``slicer`` local to the whole method, so an earlier
    ``slicer.util`` call raises UnboundLocalError at run time, in Slicer only."""
    offenders = []
    for func in (f for path in [MODULE] + SCENE_LIB for f in ast.walk(ast.parse(path.read_text()))):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    bound = {(a.asname or a.name).split(".")[0] for a in node.names}
                    if bound & {"slicer", "qt", "vtk", "ctk"}:
                        offenders.append(f"{func.name}:{node.lineno}")
    assert offenders == []


def test_no_python_threads_in_the_module_and_no_qt_in_its_scene_layer():
    """Slicer's main thread holds the GIL while Qt runs, so a Python worker thread would crawl (and a
    non-daemon one hangs Slicer's exit): the module drives the engine service from a QTimer instead."""
    threads = re.compile(r"^\s*(import|from)\s+(threading|concurrent|_thread|multiprocessing)\b|TorchWorker|QThread", re.M)
    for path in [MODULE] + SCENE_LIB:
        assert not threads.search(path.read_text()), f"{path.name} uses Python threads"
    qt_import = re.compile(r"^\s*(import|from)\s+(qt|ctk|PythonQt|DICOMLib|slicer\.ScriptedLoadableModule)\b", re.M)
    for path in SCENE_LIB:
        assert not qt_import.search(path.read_text()), f"{path.name} imports Qt"
    assert len(MODULE.read_text().splitlines()) <= 600
    # no progress dialog's canceled() (emitted by Qt when such a dialog is merely closed) cancels a job
    assert not re.search(r'connect\(\s*"canceled\(\)"', MODULE.read_text())
