"""Training on a parameter-server cluster (2 PS + 2 workers on loopback).

Each scenario of `cluster_job.py` runs in a process of its own (connecting
to a cluster changes TensorFlow's context for the whole process, and its
servers cannot be stopped); these tests check what it saw.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfrs_monolith.serving import model_server

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import saved_model_checks  # pylint: disable=g-import-not-at-top,wrong-import-position

_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    "cluster_job.py")


def _run(scenario, tmp_path, timeout=540):
  out = tmp_path / "out.json"
  log = tmp_path / "job.log"
  with open(log, "wb") as f:
    proc = subprocess.run([sys.executable, _JOB, scenario, str(out),
                           str(tmp_path)], stdout=f, stderr=subprocess.STDOUT,
                          timeout=timeout, check=False)
  text = log.read_text(errors="replace")
  assert proc.returncode == 0, f"{scenario} failed:\n{text[-6000:]}"
  return json.loads(out.read_text())


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
  return _run("fit", tmp_path_factory.mktemp("fit"))


def test_tables_are_sharded_one_shard_per_parameter_server(fit):
  assert fit["num_shards"] == {"user": 2, "item": 2}
  for table, shards in fit["placement"].items():
    # All of a shard's state (rows, index, sketch, clock, counters) lives
    # on one PS, and the two shards on different ones.
    devices = [d for d in shards.values()]
    assert all(len(d) == 1 for d in devices), (table, shards)
    assert sorted(d[0] for d in devices) == [
        "/job:ps/replica:0/task:0/device:CPU:0",
        "/job:ps/replica:0/task:1/device:CPU:0"]
  # The optimizer's slots sit beside their shard's rows.
  assert len(fit["slots"]) == 4
  for slot_device, rows_device in fit["slots"].values():
    assert slot_device == rows_device
  # Capacity is the sum of the shards; keys spread over both.
  assert fit["capacity"] == {"user": 1024, "item": 1024}
  assert fit["sizes"] == {"user": 300, "item": 400}
  for table, sizes in fit["shard_sizes"].items():
    assert sum(sizes) == fit["sizes"][table]
    assert min(sizes) > 0.35 * sum(sizes), (table, sizes)
  # Each PS holds about half of the bytes.
  per_ps = sorted(fit["ps_bytes"].values())
  assert len(per_ps) == 2 and per_ps[0] > 0.4 * sum(per_ps)


def test_cluster_training_converges_like_one_process(fit):
  # Labels are a user bias plus an item bias plus noise (variance 0.01).
  assert fit["initial_mse"] > 0.9 * fit["label_variance"]
  assert fit["local_mse"] < 0.05
  assert fit["cluster_mse"] < 0.05
  assert fit["cluster_mse"] < 2.0 * fit["local_mse"]
  assert fit["losses"][-1] < fit["losses"][0] / 20


def test_concurrent_inserts_never_share_a_row(fit):
  # Both workers insert 1,024 new keys per step into the same shards: each
  # shard's inserts run one at a time, so no key is lost and no two keys
  # share a row.
  result = fit["concurrent_inserts"]
  assert sum(s["size"] for s in result["shards"]) == result["expected"]
  for shard in result["shards"]:
    assert shard["size"] == shard["live_rows"] == shard["distinct_keys"]
    assert shard["rows_match"]


def test_sharded_checkpoint_round_trips(fit):
  assert fit["restored_equal"] is True
  assert fit["restored_sizes"] == fit["sizes"]


def test_one_merged_patch_per_table_rebuilds_an_unsharded_replica(fit):
  assert fit["patch_rows"] == fit["sizes"]
  assert fit["replica_equal"] is True


def test_batch_then_online_training_on_the_cluster(tmp_path):
  out = _run("online", tmp_path)
  batch = out["batch"]
  assert batch["examples"] == 2000
  assert batch["iterations"] == 2 * 20          # 2 epochs of 20 steps.
  assert out["restored_from"].endswith("ckpt-1")
  assert out["strategy"] == "ParameterServerStrategyV2"
  assert out["num_shards"] == 2
  # Every good example trained; the bad one dead-lettered.
  assert out["examples"] == 3000
  assert out["metrics"]["dead_letters"] == 1
  assert out["iterations"] == batch["iterations"] + out["batches"]
  # Patches of both shards, merged per table into one stream, rebuild the
  # trainer's tables on plain (unsharded) replicas.
  assert out["applied"] == out["patches"] > 0
  assert out["equal"]["user"] and out["equal"]["item"]
  assert out["equal"]["user_size"][0] == out["equal"]["user_size"][1] > 0
  assert out["equal"]["item_size"][0] == out["equal"]["item_size"][1] > 0
  # Both exports load the way TF Serving loads them (no cluster devices,
  # core ops only) and the newest serves what the trainer computes.
  for path in (batch["export_path"], out["export_path"]):
    saved_model_checks.assert_servable(path)
  version = model_server._Version(2, out["export_path"])  # pylint: disable=protected-access
  try:
    inputs = {k: tf.make_tensor_proto(np.array(v, dtype=object))
              for k, v in out["requests"].items()}
    outputs = version.run("serving_default", inputs)
  finally:
    version.close()
  (scores,) = outputs.values()
  np.testing.assert_allclose(np.reshape(scores, [-1]), out["scores"],
                             rtol=1e-5, atol=1e-6)


def test_a_killed_worker_is_tolerated(tmp_path):
  out = _run("killed_worker", tmp_path)
  assert out["before_kill"] == 40
  assert out["killed"] is True
  # The worker was killed while steps were running.
  assert out["before_kill"] < out["at_kill"] < out["scheduled"]
  # Every scheduled step ran (a step cut off on the killed worker runs again
  # on the other: at least once).
  assert out["scheduled"] <= out["after_kill"] <= out["scheduled"] + 2
  assert out["losses_finite"]
  assert out["mse"] < 0.2 * out["label_variance"]
