"""docs/EVICTION.md's example runs as written (the code block is executed verbatim)."""
import pathlib
import re


def test_eviction_example_runs():
    text = (pathlib.Path(__file__).parent.parent / "docs" / "EVICTION.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/EVICTION.md", "exec"), {})
