"""The README's front door works: its Python example runs and its quick start names the two commands."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_quick_start_is_make_demo_and_make_test():
    text = README.read_text()
    quick = text[text.index("## Quick start"):]
    quick = quick[: quick.index("\n## ", 1)]
    assert re.findall(r"^make (\w+)", quick, flags=re.M) == ["demo", "test"]
