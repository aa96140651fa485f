"""`TF_CONFIG` handling of `tfrs_monolith.distribute` (no cluster started)."""

import contextlib
import json
import subprocess
import sys

import pytest

from tfrs_monolith import distribute


def _config(job, index=0):
  return json.dumps({"cluster": {"chief": ["localhost:1"],
                                 "worker": ["localhost:2"],
                                 "ps": ["localhost:3"]},
                     "task": {"type": job, "index": index}})


def test_without_a_cluster_the_scope_does_nothing(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  assert isinstance(distribute.strategy_scope(), contextlib.nullcontext)
  # A cluster without parameter servers (e.g. for another strategy) too.
  monkeypatch.setenv("TF_CONFIG", json.dumps(
      {"cluster": {"worker": ["localhost:2"]},
       "task": {"type": "worker", "index": 0}}))
  assert isinstance(distribute.strategy_scope(), contextlib.nullcontext)


def test_trainer_on_a_ps_or_worker_task_is_refused(monkeypatch):
  monkeypatch.setenv("TF_CONFIG", _config("worker"))
  with pytest.raises(ValueError, match="'worker' task.*tfrs-monolith server"):
    distribute.strategy_scope()


@pytest.mark.parametrize("text, message", [
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"task": {}}', "must be a JSON object with a 'cluster'"),
    (_config("chief"), "runs ps and worker tasks"),
    (_config("ps", 3), "task index 3 is not one of the 1 'ps' tasks"),
])
def test_server_refuses_a_bad_tf_config(monkeypatch, text, message):
  monkeypatch.setenv("TF_CONFIG", text)
  with pytest.raises(ValueError, match=message):
    distribute.run_server(join=False)


def test_server_command_needs_tf_config(tmp_path):
  env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run(
      [sys.executable, "-m", "tfrs_monolith.cli", "server"], env=env,
      capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
  assert proc.returncode != 0
  assert "TF_CONFIG is not set" in proc.stderr


def test_local_cluster_checks_its_arguments():
  with pytest.raises(ValueError, match="num_ps=-1"):
    distribute.LocalCluster(num_workers=1, num_ps=-1)
