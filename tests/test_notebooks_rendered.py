"""The committed notebooks are rendered (``make render``): each has outputs, and they were computed
from its current code cells (the hash stored at render time matches)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("render_notebooks", ROOT / "tools" / "render_notebooks.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_is_rendered_from_its_current_code(path):
    nb = nbformat.read(path, as_version=4)
    assert render.has_outputs(nb), f"{path.name} is not executed: run `make render` and commit the notebooks"
    stored = nb.metadata.get("dphrl", {}).get("source_hash")
    assert stored == render.source_hash(nb), (
        f"{path.name}: its code changed since it was rendered: run `make render` and commit the notebooks")


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_no_cell_shows_the_same_figure_twice(path):
    """``display(fig)`` on a figure that the inline backend also shows at the cell's end draws it twice."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        images = [out.get("data", {}).get("image/png") for out in cell.get("outputs", [])]
        images = [image for image in images if image]
        assert len(images) == len(set(images)), f"{path.name}, cell {index}: one figure is shown twice"
