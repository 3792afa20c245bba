"""Install planning for the Slicer module (LinGuinELib/frontend/install_plan.py): requirement files that
agree with pyproject.toml and follow the chosen backends, what is missing, model weights to download, pip
constraints and the torch restart rule."""

from __future__ import annotations

from conftest import REPO
from LinGuinELib.frontend import install_plan
from LinGuinELib.frontend.settings import Settings

RESOURCES = REPO / "Resources"


def _spec(requirement: str) -> tuple[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    req = Requirement(requirement)
    return canonicalize_name(req.name), str(req.specifier)


def test_requirements_files_agree_with_pyproject_and_spare_slicers_packages():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = dict(_spec(r) for r in project["dependencies"])
    base = dict(_spec(r) for r in install_plan.read_requirements(RESOURCES / "requirements.txt"))
    never = {_spec(n)[0] for n in install_plan.NEVER_INSTALL}
    assert not never & set(base), "Slicer's own packages must not be in requirements.txt"
    assert set(base) == set(runtime) - never - {"matplotlib"}
    assert all(base[n] == runtime[n] for n in base), "requirements.txt ranges differ from pyproject.toml"
    gpu = dict(_spec(r) for r in project["optional-dependencies"]["gpu"])
    assert gpu["torch"] == str(_spec("torch" + install_plan.TORCH_REQUIREMENT)[1])
    for extra in RESOURCES.glob("requirements-*.txt"):
        for name, spec in (_spec(r) for r in install_plan.read_requirements(extra)):
            assert name not in never and gpu.get(name) == spec, f"{extra.name}: {name}{spec} vs pyproject gpu extra"


def test_requirement_files_follow_the_chosen_backends():
    names = lambda reg, seg: [p.name for p in install_plan.requirement_files(RESOURCES, reg, seg)]
    assert names("sitk", "classic") == ["requirements.txt"]
    assert names("unigradicon", "classic") == ["requirements.txt", "requirements-gradicon.txt"]
    assert names("lunggradicon", "nninteractive") == ["requirements.txt", "requirements-gradicon.txt",
                                                      "requirements-nninteractive.txt"]
    assert not install_plan.needs_torch(RESOURCES, "identity", "classic")
    assert install_plan.needs_torch(RESOURCES, "sitk", "nninteractive")
    assert names("sitk", "vista3d") == ["requirements.txt", "requirements-vista3d.txt"]


def test_missing_requirements_and_the_confirmation_text():
    from importlib.metadata import PackageNotFoundError

    installed = {"scipy": "1.17.1", "scikit-image": "0.20.0"}

    def version_of(name):
        if name not in installed:
            raise PackageNotFoundError(name)
        return installed[name]

    reqs = ["scipy>=1.10,<2", "scikit-image>=0.21,<0.27", "connected-components-3d>=3.12,<5",
            "pywin32>=300; sys_platform == 'nonexistent'"]
    missing = install_plan.missing_requirements(reqs, version_of)
    assert missing == ["scikit-image>=0.21,<0.27", "connected-components-3d>=3.12,<5"]
    text, total = install_plan.install_summary(missing, torch_missing=True)
    assert "torch" in text.splitlines()[0] and "scikit-image" in text and "19 MB" in text
    assert total == install_plan.TORCH_APPROX_MB + 54 + 19


def test_models_to_download_skips_cached_and_local_weights(tmp_path):
    from LinGuinELib.backends.models import ModelManager

    manager = ModelManager(home=tmp_path / "home", offline=True)
    settings = Settings(registration="unigradicon", segmentation="nninteractive")
    assert [s.id for s in install_plan.models_to_download(manager, settings)] == ["unigradicon", "nninteractive"]
    assert install_plan.models_to_download(manager, Settings()) == []  # CPU backends need no weights
    cached = manager.model_dir("unigradicon") / "Step_2_final.trch"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    local = tmp_path / "local"
    for f in manager.spec("nninteractive").files:
        (local / "nninteractive" / f.path).parent.mkdir(parents=True, exist_ok=True)
        (local / "nninteractive" / f.path).write_bytes(b"x")
    assert install_plan.models_to_download(manager, Settings("unigradicon", "nninteractive", weights=str(local))) == []


def test_pip_constraints_pin_slicers_own_packages_at_their_installed_versions():
    import importlib.metadata

    from LinGuinELib.frontend import install_plan as plan

    versions = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "vtk": "9.4.2"}

    def version_of(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    lines = plan.constraints_text(version_of).split()
    assert lines == ["SimpleITK==2.4.0", "numpy==1.26.4", "vtk==9.4.2"]  # torch absent: nothing to pin


def test_a_restart_is_required_before_replacing_an_imported_torch():
    from LinGuinELib.frontend.install_plan import restart_needed_for_torch

    assert restart_needed_for_torch(True, {"torch", "numpy"})
    assert not restart_needed_for_torch(True, {"numpy"})
    assert not restart_needed_for_torch(False, {"torch"})
