"""The distribution ships `cosmo_optim/callbacks/` as `cosmo_optim.callbacks`, never as `callbacks`."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.util, cosmo_optim, cosmo_optim.callbacks
print(cosmo_optim.__file__)
print(cosmo_optim.callbacks.__file__)
print(importlib.util.find_spec("callbacks") is None)
"""


def probe(cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_editable_install_finds_callbacks_where_the_source_tree_has_them(tmp_path):
    package, callbacks, no_top_level = probe(tmp_path)
    assert Path(package) == REPO / "cosmo_optim" / "__init__.py"
    assert Path(callbacks) == REPO / "cosmo_optim" / "callbacks" / "__init__.py"
    assert no_top_level == "True"


@pytest.mark.slow
def test_built_wheel_holds_the_subpackage_and_py_typed(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("cosmo_optim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cosmo_optim/callbacks/__init__.py" in names
    assert "cosmo_optim/py.typed" in names
    assert not any(n.startswith("callbacks/") for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    package, callbacks, no_top_level = probe(tmp_path, env={"PYTHONPATH": str(target), "PATH": ""})
    assert Path(package) == target / "cosmo_optim" / "__init__.py"
    assert Path(callbacks) == target / "cosmo_optim" / "callbacks" / "__init__.py"
    assert no_top_level == "True"
