"""The package layout: the HPC step never imports the GPU step or TensorFlow; the public API."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import stardist_hpc

PACKAGE = Path(stardist_hpc.__file__).parent
#: modules the HPC step (and the shared sub-packages) must never import.
GPU_ONLY = ("tensorflow", "keras", "csbdeep", "stardist_hpc.predict")


def _imported_modules(path):
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = ".".join(("stardist_hpc", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            name = ".".join(p for p in (base, node.module) if p)
            yield name
            yield from (f"{name}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("sub_package", ["segment", "geometry", "io"])
def test_hpc_side_never_imports_the_gpu_step(sub_package):
    offending = [(str(path.relative_to(PACKAGE)), name)
                 for path in sorted((PACKAGE / sub_package).rglob("*.py"))
                 for name in _imported_modules(path)
                 if name.startswith(GPU_ONLY)]
    assert offending == []


def test_running_the_hpc_step_loads_no_tensorflow():
    code = ("import sys, stardist_hpc.segment.step, stardist_hpc.cli; "
            "from stardist_hpc import segment_candidates, open_candidates, read_objects; "
            "print(sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras', "
            "'stardist_hpc.predict'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_public_api():
    assert set(stardist_hpc.__all__) == {"predict_candidates", "segment_candidates",
                                         "open_candidates", "read_objects", "UserError",
                                         "__version__"}
    for name in stardist_hpc.__all__:
        assert getattr(stardist_hpc, name) is not None
    assert (PACKAGE / "py.typed").exists()


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "stardist_hpc", "segment", "--help"],
    [sys.executable, "-m", "stardist_hpc", "predict", "--help"],
    ["stardist-hpc-segment", "--help"],
    ["stardist-hpc-predict", "--help"],
])
def test_installed_commands(command):
    if not command[0].startswith("/"):
        command[0] = str(Path(sys.executable).parent / command[0])
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--set KEY=VALUE" in result.stdout


def test_module_without_a_step_prints_usage():
    result = subprocess.run([sys.executable, "-m", "stardist_hpc"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "predict,segment" in result.stderr
