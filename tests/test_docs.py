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
def test_notebook_runs(path):
    import nbformat
    from nbclient import NotebookClient

    assert len(NOTEBOOKS) == 4
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
