"""Build the notebooks from their sources in notebooks/_src/ and execute them, so each .ipynb is stored
with its outputs.

    python notebooks/_build.py            # all notebooks
    python notebooks/_build.py 01 03      # only those whose name starts with 01 or 03

A source is a plain Python file in jupytext's "percent" format: `# %%` starts a code cell, `# %% [markdown]` a
markdown cell whose lines are written as comments (`# text`). jupytext turns it into cells (the same as
`jupytext --to notebook`; tests/test_notebooks.py checks that every stored notebook still matches its source);
this script only adds the kernel and executes it, in notebooks/ as the working directory, the way
`pytest --nbmake notebooks/` runs them.
"""

import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def read_cells(path):
    """The cells of a percent-format source, as jupytext reads them."""
    return jupytext.read(path, fmt="py:percent").cells


def build(src):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = read_cells(src)
    out = HERE / (src.stem + ".ipynb")
    t0 = time.time()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()
    seconds = time.time() - t0
    for cell in nb.cells:  # keep diffs quiet: no per-run execution metadata
        cell.metadata.pop("execution", None)
    nbformat.write(nb, out)
    print(f"{out.name}: executed in {seconds:.1f}s")
    return seconds


if __name__ == "__main__":
    prefixes = sys.argv[1:]
    for src in sorted((HERE / "_src").glob("*.py")):
        if not prefixes or any(src.stem.startswith(p) for p in prefixes):
            build(src)
