"""Every notebook under notebooks/ runs top to bottom in a fresh Jupyter kernel."""

import os
import pathlib
import re
import resource
import time

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/proxjax/proxjax/blob/main/notebooks/"
# A Python warning as the warnings module prints it, e.g. "DeprecationWarning: ".
PYTHON_WARNING = re.compile(r"\b\w+Warning: ")


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _plot_cells(nb):
    return [cell for cell in _code_cells(nb) if "plt.show()" in cell.source]


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A "python3" kernel that runs this interpreter on this checkout.

    An installed "python3" spec may point at another Python (a user-wide
    spec, for example), and an installed proxjax may not be the code under
    test: the spec written here is found first, and the kernel imports
    proxjax from the repository root, as pytest itself does.
    """
    write_kernel_spec(tmp_path / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    return "python3"


@pytest.mark.parametrize("path", PATHS, ids=[path.name for path in PATHS])
def test_notebook_runs_and_draws_its_plots(path, kernel_name):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    client.execute()
    seconds = time.perf_counter() - start
    # The kernel has exited and been waited for: its CPU time is counted here.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    print(f"{path.name}: executed in {seconds:.1f} s ({cpu:.1f} s of CPU time)")

    for cell in _code_cells(nb):
        assert not [out for out in cell.outputs if out.output_type == "error"]
        stderr = "".join(
            out.text
            for out in cell.outputs
            if out.output_type == "stream" and out.name == "stderr"
        )
        assert not PYTHON_WARNING.search(stderr), stderr
    plots = _plot_cells(nb)
    assert plots, f"{path.name} draws no plot"
    for cell in plots:
        images = [out for out in cell.outputs if "image/png" in out.get("data", {})]
        assert images, f"no image from the cell:\n{cell.source}"


@pytest.mark.parametrize("path", PATHS, ids=[path.name for path in PATHS])
def test_notebook_is_stripped_and_opens_in_colab(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, cell.source
    assert COLAB + path.name in nb.cells[0].source
    install = _code_cells(nb)[0].source
    assert "import google.colab" in install and "pip install" in install
