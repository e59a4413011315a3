"""The render tooling (tools/render_notebooks.py): normalisation is idempotent, the install cell
asks for the gpu extra only where the one-GPU preset is used, and the stored hash follows the code."""

import importlib.util
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("render_notebooks", ROOT / "tools" / "render_notebooks.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)
REPO = "https://github.com/owner/name"


def _notebook(*code: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), *map(nbformat.v4.new_code_cell, code)]
    for cell in nb.cells:
        del cell["id"]
    return nb


def test_normalize_adds_badge_install_and_ids_once():
    nb = render.normalize(_notebook("x = 1", "print(x)"), "07_x.ipynb", REPO)
    assert nb.cells[0].source == render.badge(REPO, "07_x.ipynb")
    assert "colab.research.google.com/github/owner/name/blob/main/notebooks/07_x.ipynb" in nb.cells[0].source
    assert nb.cells[1].cell_type == "code" and "import dphrl_mini" in nb.cells[1].source
    assert '"dphrl-mini @ git+https://github.com/owner/name"' in nb.cells[1].source
    assert all(cell.get("id") for cell in nb.cells)
    nbformat.validate(nb)
    again = render.normalize(nbformat.from_dict(nb), "07_x.ipynb", REPO)
    assert again == nb


def test_gpu_extra_only_for_the_one_gpu_preset():
    nb = render.normalize(_notebook('preset_config("one-gpu-qlora")'), "06_x.ipynb", REPO)
    assert "dphrl-mini[gpu] @ git+" in nb.cells[1].source


def test_source_hash_follows_code_not_outputs_or_markdown():
    nb = render.normalize(_notebook("x = 1"), "a.ipynb", REPO)
    before = render.source_hash(nb)
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text="1")]
    nb.cells[2].source += " edited"  # the title
    assert render.source_hash(nb) == before
    nb.cells[-1].source = "x = 2"
    assert render.source_hash(nb) != before
    assert not render.has_outputs(nb)  # not executed


def test_repository_url_and_readme_badges(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n\n[project.urls]\nRepository = "https://github.com/o/n.git"\n')
    assert render.repository_url(pyproject) == "https://github.com/o/n"
    readme = tmp_path / "README.md"
    readme.write_text("| notebook | what you see |\n|---|---|\n| `01_a` | the a |\n")
    render.update_readme(readme, REPO)
    first = readme.read_text()
    assert f"| `01_a` | {render.badge(REPO, '01_a.ipynb')} | the a |" in first
    render.update_readme(readme, REPO)
    assert readme.read_text() == first
