"""A short soak run: the live loop through trainer, sidecar and broker
faults and a new model version, proven by counting (`make soak` runs the
long one)."""

import importlib.util
import json
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


def _soak_module():
  spec = importlib.util.spec_from_file_location("tfrs_monolith_soak", _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_short_soak_loses_nothing(tmp_path):
  figures = _soak_module().run(seconds=60, rate=200, out=str(tmp_path))
  print(json.dumps(figures, sort_keys=True))
  assert figures["checks"] == {
      "no_example_lost": True, "no_patch_lost": True, "rows_equal": True,
      "new_version_served": True, "no_dead_letters": True,
      "no_unplanned_restarts": True}, figures
  # The faults happened.
  assert figures["trainer"]["kills"] == 1 and figures["sidecar"]["kills"] == 1
  assert figures["examples_acked"] >= 60 * 200 * 0.5
  assert all(n > 0 for n in figures["patches_published"].values())
  assert all(r["keys"] > 100 for r in figures["rows"].values())
