"""The README's code blocks and the notebooks run, so they cannot rot."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_two = _blocks("bash")[:2]
    assert text.index("```bash") < text.index("```python")
    assert "mlefit fit" in first_two[0]
    assert "pytest" in first_two[1]
    ci = (ROOT / ".ci" / "run").read_text()
    # .ci/run runs exactly the test command of the README.
    assert first_two[1].strip() in ci


def test_readme_python_blocks_run():
    blocks = _blocks("python")
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    """Every code cell, in order, in one namespace, in this process (as Jupyter would run
    them, without a kernel's start-up and a second import of JAX: the notebooks hold plain
    Python, no magics). The file must be a valid notebook (nbformat's schema)."""
    import nbformat

    assert len(NOTEBOOKS) == 4
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    assert cells and not any(line.lstrip().startswith(("%", "!"))
                             for src in cells for line in src.splitlines())
    monkeypatch.chdir(path.parent)
    namespace: dict = {"__name__": "__main__"}
    for i, src in enumerate(cells):
        exec(compile(src, f"{path.name}, code cell {i}", "exec"), namespace)  # noqa: S102
