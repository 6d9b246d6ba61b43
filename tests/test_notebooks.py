"""The stored notebooks cannot drift from their sources: each notebooks/NN_*.ipynb has exactly the cells that
jupytext reads from notebooks/_src/NN_*.py (rebuild with `python notebooks/_build.py NN` after editing a
source)."""

from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted((NOTEBOOKS / "_src").glob("*.py"))


def test_every_source_has_a_notebook_and_the_reverse():
    assert [s.stem for s in SOURCES] == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert len(SOURCES) >= 7


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_stored_notebook_matches_its_source(source):
    expected = [(c.cell_type, c.source) for c in jupytext.read(source, fmt="py:percent").cells]
    stored = nbformat.read(NOTEBOOKS / f"{source.stem}.ipynb", as_version=4)
    got = [(c.cell_type, c.source) for c in stored.cells]
    assert got == expected, (f"{source.name} changed since {source.stem}.ipynb was built: "
                             f"python notebooks/_build.py {source.stem[:2]}")
    assert all(c.get("outputs") is not None for c in stored.cells if c.cell_type == "code")


def test_the_check_has_teeth(tmp_path):
    """An edited source no longer matches the stored notebook."""
    source = SOURCES[0]
    edited = tmp_path / source.name
    edited.write_text(source.read_text(encoding="utf-8") + "\n# %%\nprint('a new cell')\n", encoding="utf-8")
    expected = [(c.cell_type, c.source) for c in jupytext.read(edited, fmt="py:percent").cells]
    stored = nbformat.read(NOTEBOOKS / f"{source.stem}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in stored.cells] != expected
