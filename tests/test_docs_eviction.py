"""docs/EVICTION.md's examples run as written (each python block executed verbatim)."""
import pathlib
import re


def test_eviction_example_runs():
    text = (pathlib.Path(__file__).parent.parent / "docs" / "EVICTION.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "docs/EVICTION.md", "exec"), {})
