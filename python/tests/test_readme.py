"""The quickstart in python/README.md runs as written."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_quickstart_runs_and_prints_the_averaged_model():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "one Python quickstart block"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), {})
    survivors, version, *values = out.getvalue().replace("[", " ").replace("]", " ").split()
    assert (survivors, version) == ("3", "2")
    assert [round(float(v), 3) for v in values] == [0.1] * 4
