"""Project set-up: the conda environment matches pyproject, the scripts stay thin and fast."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(requirement):
    return re.split(r"[<>=\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"] + extras["cpu"] + extras["test"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {_name(r) for r in pip_section} == wanted


def test_help_answers_without_importing_tensorflow():
    for script in ("local_prediction.py", "hpc_prediction.py"):
        out = subprocess.run([sys.executable, "-X", "importtime", str(REPO / script), "--help"],
                             capture_output=True, text=True, check=True)
        assert "--set" in out.stdout
        assert "tensorflow" not in out.stderr


def test_make_targets_install_before_running():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: \$\(STAMP\)", makefile, re.M)
    assert re.search(r"^test: \$\(STAMP\)", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
