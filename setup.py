"""Setuptools shim: everything is in setup.cfg except shipping the registration `.pth` file.

A `.pth` file in site-packages is the only standard way to run a line of code when Python
starts, which is what lets the *unmodified* `clip_benchmark` console script see the
`sd-diffusion` model. The line it runs only installs a lazy import hook (no torch import).
setuptools has no declarative option for top-level files in site-packages, so `build_py`
copies it next to the packages, for regular and editable (PEP 660) installs alike.
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_FILE = "clip_benchmark_diffusion_autoregister.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, PTH_FILE)
        shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH_FILE), target)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH_FILE)]


class EditableWheelWithPth(editable_wheel):
    """Editable wheels only carry the packages' paths, so put the `.pth` in the wheel itself."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH_FILE),
                        os.path.join(unpacked_wheel, PTH_FILE))
        return result


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
