"""scripts/install.sh: an installed package at another version than a pin of setup.py is found
(and then replaced) without FORCE_REINSTALL. The check is the script's own embedded Python,
run here against setup.py files that pin the installed mujoco to its own and to another version."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def pin_check_code() -> str:
    script = (REPO_ROOT / "scripts" / "install.sh").read_text()
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", script, re.S)
    assert match, "install.sh lost its pin check"
    return match.group(1)


def mismatched_pins(setup_py: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-", str(setup_py)], input=pin_check_code(), text=True,
                         capture_output=True, check=True)
    return out.stdout.split()


def test_the_repository_pins_are_what_is_installed():
    pytest.importorskip("mujoco")
    assert mismatched_pins(REPO_ROOT / "setup.py") == []


def test_another_installed_version_is_reported_for_reinstall(tmp_path):
    installed = version("mujoco")
    setup_py = tmp_path / "setup.py"
    setup_py.write_text(
        "install_requires=[\n"
        "    'numpy',\n"
        f"    'mujoco==0.0.1; python_version >= \"3\"',  # marker applies: mismatch\n"
        f"    \"mujoco=={installed}\",  # matches\n"
        "    'mujoco==0.0.2; python_version < \"3\"',  # marker does not apply: ignored\n"
        "    'no-such-package-for-ript==1.0',  # missing: installed\n"
        "]\n")
    assert mismatched_pins(setup_py) == ["mujoco==0.0.1", "no-such-package-for-ript==1.0"]
    assert "FORCE_REINSTALL" not in pin_check_code()
