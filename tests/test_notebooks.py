"""Every notebook in ``notebooks/`` runs top to bottom without a cell error, on this interpreter.

The kernel is a ``python3`` kernelspec written into a temporary ``JUPYTER_PATH`` for ``sys.executable``:
``JUPYTER_PATH`` comes before the user's and the environment's kernelspecs, so a ``python3`` kernel
registered elsewhere (``~/.local/share/jupyter``, another environment) can never run the notebooks
with a Python that lacks ``keypointdet``. Connection files and the IPython profile also go to
temporary directories, and each notebook runs in an empty temporary working directory.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "python3"


@pytest.fixture(scope="module")
def kernel_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A ``python3`` kernelspec for ``sys.executable``, found first, and Jupyter / IPython state in tmp."""
    root = tmp_path_factory.mktemp("jupyter")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root / "share" / "jupyter"))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
        patch.setenv("IPYTHONDIR", str(root / "ipython"))  # set first: installing the spec creates it
        install_kernelspec(kernel_name=KERNEL, prefix=str(root))  # argv[0] = sys.executable
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        assert spec.argv[0] == sys.executable, f"kernel {KERNEL!r} would run {spec.argv[0]}, not {sys.executable}"
        yield


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_environment: None, tmp_path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [(i, cell) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    stale = [i for i, cell in code if cell.outputs or cell.execution_count]
    assert not stale, f"{path.name} is saved with outputs (cells {stale}); clear them before committing"

    resources = {"metadata": {"path": str(tmp_path)}}  # the kernel's working directory
    client = NotebookClient(notebook, timeout=600, kernel_name=KERNEL, resources=resources)
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first failing cell

    left = sorted(p.name for p in tmp_path.iterdir())
    assert not left, f"{path.name} wrote {left} into its working directory; use a temporary directory"
