"""The README's quick start runs as written."""

import pathlib
import re


def test_quick_start_runs():
  readme = (pathlib.Path(__file__).resolve().parents[1] /
            "README.md").read_text()
  section = readme.split("## Quick start", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  model, replica = namespace["model"], namespace["replica"]
  assert model.user_model.table.size().numpy() == 3
  assert model.movie_model.table.size().numpy() == 3
  assert replica.table.size().numpy() == 3
