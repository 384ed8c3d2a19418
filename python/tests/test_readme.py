"""The Python quickstart runs as written: python/README.md's, which the
project README repeats word for word."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
PROJECT_README = README.parent.parent / "README.md"


def test_the_readme_quickstart_runs_and_prints_the_averaged_model():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "one Python quickstart block"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), {})
    survivors, version, *values = out.getvalue().replace("[", " ").replace("]", " ").split()
    assert (survivors, version) == ("3", "2")
    assert [round(float(v), 3) for v in values] == [0.2] * 2


def test_the_project_readme_shows_the_same_quickstart():
    ours = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    project = re.findall(r"```python\n(.*?)```", PROJECT_README.read_text(), flags=re.S)
    assert ours[0] in project, "README.md's Python quickstart differs from python/README.md's"
