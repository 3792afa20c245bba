"""Installing what the local engine service needs into Slicer's Python (as SlicerNNUnet's installer does).

The local service runs on Slicer's own Python, so its packages are installed there; a remote engine
needs nothing installed. Slicer's own packages are pinned by a pip constraints file; a torch that is
already imported is never replaced without a restart.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile

import slicer


class Installer:
    """``confirm(text, title) -> bool`` and ``inform(text)`` are the dialogs (``slicer.util`` ones in Slicer)."""

    def __init__(self, resources: str, confirm, inform):
        self.resources, self.confirm, self.inform = resources, confirm, inform

    def plan(self, settings):
        """(requirements, missing, torch_missing) of the chosen backends."""
        from LinGuinELib.frontend import install_plan as plan

        files = plan.requirement_files(self.resources, settings.registration, settings.segmentation)
        requirements = [r for f in files for r in plan.read_requirements(f)]
        torch_missing = (plan.needs_torch(self.resources, settings.registration, settings.segmentation)
                         and bool(plan.missing_requirements(["torch" + plan.TORCH_REQUIREMENT])))
        return files, requirements, plan.missing_requirements(requirements), torch_missing

    def ensure(self, settings, interactive: bool = True) -> bool:
        """Install what is missing, after showing what and how big. False when the user declined or
        Slicer must restart first."""
        from LinGuinELib.frontend import install_plan as plan

        files, requirements, missing, torch_missing = self.plan(settings)
        if not missing and not torch_missing:
            return True
        if plan.restart_needed_for_torch(torch_missing, sys.modules):
            self.inform("A different PyTorch is needed, but one is already loaded in Slicer. Restart Slicer, then "
                        "track again before using any other PyTorch module.")
            return False
        text, total_mb = plan.install_summary(missing, torch_missing)
        size = f"{total_mb / 1000:.1f} GB" if total_mb >= 1000 else f"{total_mb} MB"
        if interactive and not self.confirm(
                f"LinGuinE needs these Python packages (about {size} in all, downloaded once):\n\n{text}\n\n"
                "Install them now? Slicer's own SimpleITK, VTK and numpy are kept as they are.",
                "LinGuinE - install Python packages"):
            return False
        if torch_missing:
            try:
                import PyTorchUtils
            except ImportError:
                self.inform("The chosen backend needs PyTorch: install the PyTorch extension from the Extensions "
                            "Manager, restart Slicer and try again.")
                return False
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=plan.TORCH_REQUIREMENT) is None:
                raise RuntimeError("PyTorch could not be installed; install it from the PyTorch module and try again")
        if missing:
            importlib.import_module("slicer.packaging")  # a submodule Slicer does not import at startup
            with tempfile.NamedTemporaryFile("w", suffix="-constraints.txt", delete=False) as f:
                f.write(plan.constraints_text())
            try:
                slicer.packaging.pip_ensure([r for f in files for r in slicer.packaging.load_requirements(str(f))],
                                            constraints=f.name, prompt_install=False, prompt_restart=True,
                                            requester="LinGuinE", skip_in_testing=False)
            finally:
                os.unlink(f.name)
        still = plan.missing_requirements(requirements)
        if still:
            self.inform("Restart Slicer to finish installing: " + ", ".join(still))
            return False
        return True
