"""Normalise the notebooks and re-execute them with full settings, in place (``make render``).

Normalisation is idempotent (running it twice changes nothing):

1. every cell has an id (nbformat's missing-id warning);
2. the first cell is an "Open in Colab" badge, the second a code cell that installs the package
   when ``import dphrl_mini`` fails and does nothing otherwise (with the ``gpu`` extra in notebooks
   that use the ``one-gpu-qlora`` preset); both are rewritten from the repository URL in
   ``pyproject.toml`` (``[project.urls] Repository``);
3. the README's notebook table gets the same badges.

Execution runs every notebook top to bottom in its own folder with ``DPHRL_SMALL=0`` (full
settings), then stores ``source_hash(nb)``, a hash of its code cells, in ``metadata.dphrl``:
``tests/test_notebooks_rendered.py`` fails when a committed notebook has no outputs or its code
changed since it was rendered.

    python tools/render_notebooks.py                      # normalise + execute every notebook
    python tools/render_notebooks.py --no-execute         # normalise only (and the README)
    python tools/render_notebooks.py notebooks/01_*.ipynb --out /tmp/rendered
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
import warnings
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BRANCH = "main"
BADGE_ID, INSTALL_ID = "open-in-colab", "install-package"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """``[project.urls] Repository`` of pyproject.toml (a GitHub URL), without a trailing slash."""
    table = re.search(r"^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)", pyproject.read_text(), re.M | re.S)
    url = table and re.search(r'^Repository\s*=\s*"([^"]+)"', table.group(1), re.M)
    if not url or "github.com/" not in url.group(1):
        raise SystemExit(f"{pyproject}: [project.urls] needs Repository = \"https://github.com/OWNER/NAME\"")
    return url.group(1).rstrip("/").removesuffix(".git")


def colab_url(repo: str, notebook: str) -> str:
    """Colab's link that opens ``notebooks/<notebook>`` of the repository's default branch."""
    return f"https://colab.research.google.com/github/{repo.split('github.com/')[1]}/blob/{BRANCH}/notebooks/{notebook}"


def badge(repo: str, notebook: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(repo, notebook)})"


def install_source(repo: str, gpu: bool) -> str:
    requirement = f"dphrl-mini{'[gpu]' if gpu else ''} @ git+{repo}"
    return ("# Installs the package where it is missing (Colab, a fresh environment); does nothing otherwise.\n"
            "try:\n"
            "    import dphrl_mini  # noqa: F401\n"
            "except ImportError:\n"
            f'    %pip install -q "{requirement}"')


def _set_cell(nb, index: int, cell_id: str, cell) -> None:
    """Put ``cell`` (with id ``cell_id``) at ``index``, replacing the cell with that id if any."""
    cell["id"] = cell_id
    nb.cells = [c for c in nb.cells if c.get("id") != cell_id]
    nb.cells.insert(index, cell)


def normalize(nb, name: str, repo: str):
    """Badge and install cells (rewritten each time), then an id for every cell that lacks one."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and c.get("id") != INSTALL_ID)
    _set_cell(nb, 0, BADGE_ID, nbformat.v4.new_markdown_cell(badge(repo, name)))
    _set_cell(nb, 1, INSTALL_ID, nbformat.v4.new_code_cell(install_source(repo, "one-gpu-qlora" in code)))
    nb.nbformat, nb.nbformat_minor = 4, max(nb.nbformat_minor, 5)  # ids exist from nbformat 4.5 on
    taken = {c.get("id") for c in nb.cells}
    for i, cell in enumerate(nb.cells):
        if not cell.get("id"):
            cell_id = hashlib.sha1(f"{i}\n{cell.source}".encode()).hexdigest()[:8]
            while cell_id in taken:
                cell_id = hashlib.sha1(cell_id.encode()).hexdigest()[:8]
            cell["id"] = cell_id
            taken.add(cell_id)
    return nb


def source_hash(nb) -> str:
    """sha256 of the code cells' sources, in order: what the stored outputs were computed from."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def has_outputs(nb) -> bool:
    """True when the notebook was executed: every code cell ran and at least one shows something."""
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    return bool(code) and all(c.execution_count for c in code) and any(c.outputs for c in code)


def execute(nb, workdir: Path, timeout: int):
    """Run every cell top to bottom in ``workdir`` with full settings (``DPHRL_SMALL=0``)."""
    from nbclient import NotebookClient

    os.environ["DPHRL_SMALL"] = "0"  # the kernel inherits the environment
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    nb.metadata["dphrl"] = {"source_hash": source_hash(nb)}
    return nb


def update_readme(readme: Path, repo: str) -> None:
    """Give the README's notebook table a Colab column (``| `NN_name` | badge | text |``)."""
    text = readme.read_text()
    text = text.replace("| notebook | what you see |\n|---|---|", "| notebook | open | what you see |\n|---|---|---|")
    row = re.compile(r"^\| `(\d\d_\w+)` \|(?: \[!\[Open In Colab\]\([^)]*\)\]\([^)]*\) \|)? ", re.M)
    text = row.sub(lambda m: f"| `{m.group(1)}` | {badge(repo, m.group(1) + '.ipynb')} | ", text)
    readme.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--no-execute", action="store_true", help="normalise only")
    parser.add_argument("--out", type=Path, help="write the results here instead of in place")
    parser.add_argument("--timeout", type=int, default=3 * 3600, help="seconds per cell")
    args = parser.parse_args(argv)
    repo = repository_url()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        with warnings.catch_warnings():  # a cell without an id: normalize gives it one
            warnings.simplefilter("ignore", nbformat.validator.MissingIDFieldWarning)
            nb = normalize(nbformat.read(path, as_version=4), path.name, repo)
        start = time.perf_counter()
        if not args.no_execute:
            execute(nb, path.resolve().parent, args.timeout)
        target = args.out / path.name if args.out else path
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        print(f"{target}: {'normalised' if args.no_execute else 'rendered'} in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    if not args.notebooks and not args.out:
        update_readme(ROOT / "README.md", repo)


if __name__ == "__main__":
    main()
