"""Committed notebooks carry no outputs, one parameters cell and the project kernel."""

from __future__ import annotations

import nbformat
import pytest

from fracture_lib import config

NOTEBOOKS = sorted(config.NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_data_exploration",
    "02_preprocessing",
    "03_train",
    "04_evaluate",
    "05_summary",
    "06_try_your_image",
]


def test_every_numbered_notebook_exists() -> None:
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stripped_and_parameterized(path) -> None:
    notebook = nbformat.read(str(path), as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells), (
        f"{path.name} has outputs: strip them (nbstripout {path})"
    )
    tagged = [cell for cell in code_cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert notebook.metadata["kernelspec"]["name"] == config.KERNEL_NAME
    # The notebook starts with a title and explains itself in markdown.
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_papermill_sees_every_parameter(path) -> None:
    # papermill silently skips a parameter line it cannot parse (for example a comment
    # containing "="), and `make reports` would then never override that parameter.
    import ast

    import papermill

    notebook = nbformat.read(str(path), as_version=4)
    cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    assigned = {
        node.targets[0].id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
    }
    assert assigned, f"{path.name}: the parameters cell assigns nothing"
    assert set(papermill.inspect_notebook(str(path))) == assigned
