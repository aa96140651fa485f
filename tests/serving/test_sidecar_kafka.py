"""The whole serving loop against the project's real Kafka broker.

examples topic -> online trainer -> patches topic -> sidecar -> stand-in
model server, with the faults the sidecar must survive: its own kill -9,
a restart of the model server and a dense sync (new version) under load.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tfrs_monolith.serving import model_server
import online_model
import sidecar_helpers as helpers
from tfrs_monolith import streams
from tfrs_monolith.serving import client as client_lib
from tfrs_monolith.serving import sidecar as sidecar_lib

MODEL = helpers.MODEL


def _topics(prefix):
  return streams.Topics(examples=f"{prefix}examples",
                        patches=f"{prefix}patches",
                        dead_letters=f"{prefix}dead")


def _produce(transport, topic, values):
  with transport.producer() as producer:
    for value in values:
      producer.send(topic, value)


class _Background:
  """Runs `target` in a thread; re-raises its exception on `join`."""

  def __init__(self, target):
    self.error = None
    self.result = None

    def run():
      try:
        self.result = target()
      except BaseException as error:  # pylint: disable=broad-except
        self.error = error

    self.thread = threading.Thread(target=run, daemon=True)
    self.thread.start()

  def join(self, timeout=120):
    self.thread.join(timeout)
    assert not self.thread.is_alive(), "background thread did not stop"
    if self.error is not None:
      raise self.error
    return self.result


@pytest.fixture
def loop(kafka_broker, kafka_topic_prefix, tmp_path):
  """Kafka topics, a trainer whose version 1 is served; yields a dict."""
  transport = streams.open_transport(
      f"kafka://{kafka_broker.bootstrap_servers}")
  topics = _topics(kafka_topic_prefix)
  transport.create_topics([topics.examples])
  # The server starts first: its start-up overlaps the export.
  server = model_server.ModelServer(
      str(tmp_path / "base"), MODEL, poll_seconds=0.2,
      apply_log=str(tmp_path / "applied.jsonl"))
  with server, helpers.make_trainer(
      transport, tmp_path, topics=topics,
      group_id=f"{kafka_topic_prefix}trainer", poll_timeout=0.1) as trainer:
    first = int(os.path.basename(trainer.export()))
    server.wait_ready(version=first)
    with client_lib.ServingClient(server.address, MODEL,
                                  timeout=20.0) as client:
      yield dict(transport=transport, topics=topics, trainer=trainer,
                 server=server, client=client, first=first,
                 prefix=kafka_topic_prefix, url=transport.url)


def _sidecar(loop, state_dir, **kwargs):
  return sidecar_lib.Sidecar(
      loop["client"], loop["transport"], str(state_dir),
      topic=loop["topics"].patches, dead_letter_topic=loop["topics"].dead_letters,
      group_id=f"{loop['prefix']}sidecar", **kwargs)


def _wait(condition, timeout, what):
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.05)


def test_actions_change_served_scores_and_survive_a_dense_sync(loop,
                                                               tmp_path):
  transport, topics, trainer, client = (loop["transport"], loop["topics"],
                                        loop["trainer"], loop["client"])
  trainer.sparse_interval = 1.0           # Patches every second.
  trainer.dense_interval = 6.0            # And a new version under load.
  pair = {"user_id": np.array([b"fresh"], object),
          "item_id": np.array([b"3"], object)}
  before = client.predict(pair)["outputs"]
  _produce(transport, topics.examples, online_model.examples(300, seed=21))
  training = _Background(trainer.run)
  sidecar = _sidecar(loop, tmp_path / "state")
  applying = _Background(sidecar.run)
  try:
    # New actions of user "fresh": the served score moves within seconds.
    sent = time.monotonic()
    _produce(transport, topics.examples,
             [online_model.example("fresh", 3, 1.0, 5000 + k)
              for k in range(8)])
    _wait(lambda: client.predict(pair)["outputs"] != before, 30,
          "the served score to change")
    fresh_after = time.monotonic() - sent
    # Keep the stream going until the trainer's dense sync is served.
    deadline = time.monotonic() + 180
    seed = 100
    while sidecar.served_version in (None, loop["first"]):
      assert time.monotonic() < deadline, "no new version served"
      _produce(transport, topics.examples,
               online_model.examples(50, seed=seed, start=6000))
      seed += 1
      time.sleep(0.5)
  finally:
    trainer.stop()
    stats = training.join()
  target = helpers.sequences(trainer)
  version = max(helpers.version_dirs(tmp_path / "base"))
  try:
    loop["server"].wait_ready(version=version)
    _wait(lambda: (sidecar.served_version == version and
                   sidecar.applied_sequences == target), 60,
          f"sidecar to apply {target} to version {version}")
  finally:
    sidecar.stop()
    applying.join()
    sidecar.close()
  assert stats.exports >= 1 and fresh_after < 30
  assert helpers.assert_served_equal(client, trainer.model,
                                     version=version) > 100
  assert sidecar.stats.replays >= 2


def _sidecar_cli(loop, state_dir, max_seconds=None, serving=None):
  args = [sys.executable, "-m", "tfrs_monolith.cli", "sidecar",
          "--serving", serving or loop["server"].address, "--model", MODEL,
          "--patches", loop["url"], "--state-dir", str(state_dir),
          "--topic", loop["topics"].patches,
          "--dead-letter-topic", loop["topics"].dead_letters,
          "--group-id", f"{loop['prefix']}sidecar",
          "--max-request-bytes", "2100", "--status-interval", "0.5"]
  if max_seconds:
    args += ["--max-seconds", str(max_seconds)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)


def _applied_in_state(state_dir):
  path = os.path.join(state_dir, "state.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)["applied"]


def test_sidecar_killed_mid_stream_loses_nothing(loop, tmp_path):
  transport, topics, trainer = (loop["transport"], loop["topics"],
                                loop["trainer"])
  _produce(transport, topics.examples, online_model.examples(2500, seed=31))
  trainer.run(idle_timeout=1.0)
  target = helpers.sequences(trainer)
  state = tmp_path / "state"
  server = loop["server"]

  # The first sidecar writes through a proxy that holds its 8th write:
  # it is killed with writes done and writes left, on any host.
  proxy = helpers.HoldingProxy(server.address, hold_at=8)
  first = _sidecar_cli(loop, state, serving=proxy.address)
  try:
    _wait(lambda: proxy.holding.is_set() or first.poll() is not None, 90,
          "the first sidecar to reach its 8th write")
    first.send_signal(signal.SIGKILL)
    first.wait(30)
  finally:
    if first.poll() is None:
      first.kill()
      first.wait(30)
    proxy.close()
  assert first.returncode == -signal.SIGKILL, first.stdout.read().decode()
  requests_at_kill = len(server.applied())
  assert requests_at_kill == 7
  assert _applied_in_state(state) != target

  second = _sidecar_cli(loop, state)
  try:
    _wait(lambda: _applied_in_state(state) == target, 90,
          f"the restarted sidecar to apply {target}")
  finally:
    second.send_signal(signal.SIGTERM)
    output = second.communicate(timeout=60)[0].decode()
  assert second.returncode == 0, output
  summary = json.loads(output.strip().splitlines()[-1])
  assert summary["dead_letters"] == 0
  helpers.assert_served_equal(loop["client"], trainer.model)
  log = server.applied()
  hashes = [line["sha256"] for line in log]
  twice = {h for h in hashes if hashes.count(h) > 1}
  # At most the patch in flight at the kill is applied twice: its requests
  # are the last ones before the kill, all of one table.
  before_kill = [line["sha256"] in twice for line in log[:requests_at_kill]]
  assert before_kill == sorted(before_kill), before_kill
  assert len({line["table"] for line in log
              if line["sha256"] in twice}) <= 1
  assert len(hashes) - len(set(hashes)) == len(twice)


def test_model_server_restart_is_repaired(loop, tmp_path):
  transport, topics, trainer = (loop["transport"], loop["topics"],
                                loop["trainer"])
  server, client = loop["server"], loop["client"]
  _produce(transport, topics.examples, online_model.examples(1200, seed=41))
  trainer.run(idle_timeout=1.0)
  sidecar = _sidecar(loop, tmp_path / "state", status_interval=0.2,
                     max_backoff=0.5)
  with sidecar:
    target = helpers.sequences(trainer)
    helpers.run_until(sidecar, lambda: sidecar.applied_sequences == target,
                      timeout=90)
    helpers.assert_served_equal(client, trainer.model)

    server.kill()           # Loses every patch: it reloads from disk.
    for _ in range(10):
      sidecar.step()
    assert not sidecar.healthy
    _produce(transport, topics.examples,
             online_model.examples(600, seed=42, start=9000))
    trainer.run(idle_timeout=1.0)          # Patches while it is down.
    target = helpers.sequences(trainer)
    server.restart()
    server.wait_ready(version=loop["first"])
    helpers.run_until(
        sidecar, lambda: (sidecar.healthy and
                          sidecar.applied_sequences == target),
        timeout=90, what="the sidecar to repair the restarted server")
    assert sidecar.stats.replays >= 2 and sidecar.stats.serving_errors >= 1
  helpers.assert_served_equal(client, trainer.model)
