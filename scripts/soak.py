# Copyright 2026 The tfrs-monolith Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Soak run: the live loop under load and faults, proven by counting.

Starts the project's Kafka broker, a model server, the online trainer
(`tfrs-monolith train-online`, signing its patches) and the sidecar
(`tfrs-monolith sidecar`, verifying them) as separate processes, feeds
examples to the `examples` topic at `--rate` per second and, once the
first patch is served, for `--seconds` more, during which:

* kills the trainer (SIGKILL) at 20 % of the run and starts it again;
* kills the sidecar (SIGKILL) at 40 % and starts it again;
* restarts the broker at 55 % (clients keep running through it);
* the trainer exports a new model version every `--seconds / 3`, which the
  model server loads mid-run (the sidecar replays patches onto it).

A process that dies on its own is restarted too, and counted (a check
fails then). At the end
the trainer is stopped (SIGTERM: a last patch and checkpoint) and the run
proves, by counting:

* examples: every example acknowledged by the broker is in the topic, and
  the trainer's committed position is the end of the topic (none lost);
* patches: every sequence the trainer published per table is in the
  patches topic, and the sidecar applied up to the last one; a sequence
  the trainer reserved but was killed before sending is reported as a gap
  (its rows go out again in the next patch);
* rows: the served rows of every table equal the trainer's final
  checkpoint, key for key (CRC-32 checksum over keys and values), and the
  served keys are exactly the trainer's live keys.

It prints one JSON line of these figures and exits 1 if a check fails.

Usage:

  python scripts/soak.py [--seconds 300] [--rate 1000] [--out runs/soak]
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zlib

MODEL = "soak"
TABLES = ("user", "item")
_ROOT = pathlib.Path(__file__).resolve().parent.parent


def make_model():
  """The soak's ranking model (user and item tables, dim 16); what
  `train-online --model scripts/soak.py:make_model` builds."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import tensorflow_recommenders as tfrs
  import tfrs_monolith as tm

  class Ranking(tm.Model):

    def __init__(self):
      super().__init__()
      self.user = tm.CollisionlessEmbedding(16, capacity=16384, name="user")
      self.item = tm.CollisionlessEmbedding(16, capacity=8192, min_count=2,
                                            name="item")
      self.mlp = tf.keras.Sequential([
          tf.keras.layers.Dense(32, activation="relu"),
          tf.keras.layers.Dense(1)])
      self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError())

    def call(self, features, training=None):
      return self.mlp(tf.concat([
          self.user(features["user_id"], training=training),
          self.item(features["item_id"], training=training)], axis=1))

    def compute_loss(self, features, training=False):
      return self.task(labels=features["label"],
                       predictions=self(features, training=training)[:, 0])

  model = Ranking()
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.05))
  return model


def _examples(rng, n, now):
  """`n` serialized examples: Zipf users and items, a learnable label."""
  # pylint: disable=g-import-not-at-top
  from tensorflow.core.example import example_pb2
  users = rng.zipf(1.3, n) % 20_000
  items = rng.zipf(1.3, n) % 5_000
  out = []
  for user, item in zip(users.tolist(), items.tolist()):
    example = example_pb2.Example()
    feature = example.features.feature
    feature["user_id"].bytes_list.value.append(b"u%d" % user)
    feature["item_id"].bytes_list.value.append(b"i%d" % item)
    feature["label"].float_list.value.append(
        float((user * 7 + item * 3) % 5) / 4.0)
    feature["event_time"].int64_list.value.append(int(now))
    out.append(example.SerializeToString())
  return out


class _Service:
  """A command run as a child process that is restarted when it dies."""

  def __init__(self, name, command, log_path, env=None):
    self.name = name
    self.command = command
    self.log_path = log_path
    self.env = env
    self.process = None
    self.starts = 0
    self.kills = 0
    self.crashes = 0
    self.wanted = False

  def start(self):
    with open(self.log_path, "ab") as log:
      log.write(f"--- start {self.starts + 1}\n".encode())
      log.flush()
      self.process = subprocess.Popen(  # pylint: disable=consider-using-with
          self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
          env=self.env, cwd=_ROOT)
    self.starts += 1
    self.wanted = True

  def kill(self):
    """SIGKILL, the way a machine failure ends a process."""
    self.process.kill()
    self.process.wait()
    self.kills += 1

  def supervise(self):
    """Starts the process again if it died on its own."""
    if self.wanted and self.process.poll() is not None:
      self.crashes += 1
      print(f"[soak] {self.name} exited with {self.process.returncode}; "
            "restarting", flush=True)
      self.start()

  def stop(self, timeout=120):
    self.wanted = False
    if self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM)
      try:
        self.process.wait(timeout)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
        raise RuntimeError(f"{self.name} did not stop on SIGTERM in "
                           f"{timeout} s; log: {self.log_path}") from None
    return self.process.returncode


class _Load(threading.Thread):
  """Sends examples at `rate` per second; counts what the broker acked."""

  def __init__(self, transport, rate, seed=0):
    super().__init__(daemon=True, name="load")
    import numpy as np  # pylint: disable=g-import-not-at-top
    self._rng = np.random.default_rng(seed)
    self._transport = transport
    self._rate = rate
    self._halt = threading.Event()
    self.acked = 0
    self.failed = 0
    self.error = None

  def run(self):
    tick = 0.1
    per_tick = max(1, int(self._rate * tick))
    try:
      with self._transport.producer() as producer:
        next_at = time.monotonic()
        while not self._halt.is_set():
          batch = _examples(self._rng, per_tick, time.time())
          for value in batch:
            producer.send("examples", value)
          try:
            producer.flush(timeout=120)   # Rides out a broker restart.
            self.acked += len(batch)
          except Exception as error:  # pylint: disable=broad-except
            self.failed += len(batch)
            self.error = repr(error)
          next_at += tick
          self._halt.wait(max(0.0, next_at - time.monotonic()))
    except Exception as error:  # pylint: disable=broad-except
      self.error = repr(error)

  def stop(self):
    self._halt.set()
    if self.is_alive():
      self.join(180)


def _sidecar_applied(port):
  """`{table: applied sequence}` from the sidecar's /metrics."""
  with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                              timeout=5) as reply:
    text = reply.read().decode()
  return {m.group(1): int(float(m.group(2))) for m in re.finditer(
      r'applied_sequence\{model="[^"]*",table="([^"]+)"\} (\S+)', text)}


def _wait(condition, timeout, what, every=0.5, services=()):
  deadline = time.monotonic() + timeout
  while True:
    for service in services:
      service.supervise()
    try:
      if condition():
        return
    except Exception:  # pylint: disable=broad-except
      pass      # Not up yet.
    if time.monotonic() > deadline:
      raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
    time.sleep(every)


def _checksum(keys, values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  order = np.argsort(keys)
  return zlib.crc32(np.asarray(keys, "<i8")[order].tobytes() +
                    np.ascontiguousarray(values, "<f4")[order].tobytes())


def run(seconds=300.0, rate=1000, out="runs/soak", seed=0):
  """Runs the soak; returns its figures (`ok` says whether all checks
  passed)."""
  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(_ROOT / "scripts"))
  import kafka_broker
  import numpy as np
  import tfrs_monolith  # noqa: F401  Keras 2 before TensorFlow.
  from tfrs_monolith import export
  from tfrs_monolith import models
  from tfrs_monolith import online
  from tfrs_monolith import patch as patch_lib
  from tfrs_monolith import streams
  from tfrs_monolith.serving import client as client_lib
  from tfrs_monolith.serving import model_server

  started = time.monotonic()
  out = pathlib.Path(out).resolve()
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir(parents=True)
  base, ckpt, state = out / "base", out / "trainer", out / "sidecar"
  keys_file = out / "patch-keys.json"
  keys_file.write_text(patch_lib.PatchKeys.generate("soak"))
  os.chmod(keys_file, 0o600)

  kafka_broker.fetch(quiet=True)
  broker = kafka_broker.KafkaBroker(out / "kafka")
  broker.start()
  url = f"kafka://{broker.bootstrap_servers}"
  transport = streams.open_transport(url)
  transport.create_topics(["examples", "patches", "dead-letters"])

  # Version 1 and the trainer's starting checkpoint: the same weights.
  model = make_model()
  model({"user_id": np.array([b"u0"]), "item_id": np.array([b"i0"])})
  online.save_initial_checkpoint(model, str(ckpt))
  export.export_saved_model(model, str(base / "1"), {t: 0 for t in TABLES})

  server = model_server.ModelServer(str(base), MODEL, poll_seconds=0.5,
                                    log_path=str(out / "model_server.log"))
  server.wait_ready(version=1, timeout=120)
  client = client_lib.ServingClient(server.address, MODEL, timeout=30)
  cli = [sys.executable, "-m", "tfrs_monolith.cli"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  trainer = _Service("trainer", cli + [
      "train-online", "--transport", url, "--model",
      f"{pathlib.Path(__file__).resolve()}:make_model",
      "--checkpoint-dir", str(ckpt), "--model-name", MODEL,
      "--batch-size", "256", "--sparse-interval", "1",
      "--dense-interval", str(max(10.0, seconds / 3)),
      "--export-dir", str(base), "--patch-keys", str(keys_file),
      "--log-interval", "10"], out / "trainer.log", env)
  metrics_port = model_server.free_port()
  sidecar = _Service("sidecar", cli + [
      "sidecar", "--serving", server.address, "--model", MODEL,
      "--patches", url, "--state-dir", str(state),
      "--patch-keys", str(keys_file), "--status-interval", "0.5",
      "--metrics-port", str(metrics_port)], out / "sidecar.log", env)
  services = (trainer, sidecar)
  trainer.start()
  sidecar.start()
  load = _Load(transport, rate, seed)
  figures = {"seconds": seconds, "rate": rate}
  try:
    load.start()
    # A fault waits until its process has done some work since it started
    # (a patch published, a patch applied), up to 90 % of the run.
    def published():
      try:
        with open(ckpt / "published.json", encoding="utf-8") as f:
          return sum(json.load(f).values())
      except (OSError, ValueError):
        return 0

    def applied():
      try:
        return sum(_sidecar_applied(metrics_port).values())
      except OSError:
        return 0

    # The clock starts once the loop runs: a patch published and applied.
    _wait(lambda: published() > 0 and applied() > 0, 300,
          "the first patch to be published and applied", services=services)
    figures["warm_up_seconds"] = round(time.monotonic() - started, 1)
    trainer_mark = published()
    ready = {"kill trainer": lambda: published() > trainer_mark,
             "kill sidecar": lambda: applied() > 0,
             "restart broker": lambda: True}
    faults = [(0.20, "kill trainer"), (0.40, "kill sidecar"),
              (0.55, "restart broker")]
    fault_times = {}
    figures["faults_at_seconds"] = fault_times
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
      elapsed = (time.monotonic() - t0) / seconds
      while faults and elapsed >= faults[0][0] and (
          elapsed >= 0.9 or ready[faults[0][1]]()):
        _, fault = faults.pop(0)
        print(f"[soak] {time.monotonic() - t0:.0f} s: {fault}", flush=True)
        fault_times[fault] = round(time.monotonic() - t0, 1)
        if fault == "kill trainer":
          trainer.kill()
          time.sleep(1.0)
          trainer.start()
        elif fault == "kill sidecar":
          sidecar.kill()
          time.sleep(1.0)
          sidecar.start()
        else:
          broker.restart()
      for service in services:
        service.supervise()
      time.sleep(0.2)
    load.stop()
    figures["examples_acked"] = load.acked
    figures["examples_send_failed"] = load.failed
    end = transport.end_offsets(["examples"])[("examples", 0)]
    figures["examples_in_topic"] = end

    # The trainer catches up, then stops with a last patch and checkpoint.
    def trained():
      with transport.consumer(["examples"], "online-trainer") as group:
        return group.committed().get(("examples", 0), 0) >= end
    _wait(trained, 300, "the trainer to commit every example",
          services=services)
    trainer.wanted = False
    figures["trainer_exit_code"] = trainer.stop()
    with transport.consumer(["examples"], "online-trainer") as group:
      figures["examples_trained_to"] = group.committed()[("examples", 0)]
    with open(ckpt / "published.json", encoding="utf-8") as f:
      published = {t: int(s) for t, s in json.load(f).items()}
    figures["patches_published"] = published

    # Every published sequence is in the topic.
    sent = {t: set() for t in TABLES}
    with transport.consumer(["patches"], "soak-audit") as consumer:
      while True:
        records = consumer.poll(10_000, 1.0)
        if not records:
          break
        for record in records:
          patch_id = patch_lib.EmbeddingPatch.read_chunk(record.value)[0]
          _, table, sequence = patch_id.rsplit("/", 2)
          sent[table].add(int(sequence))
    gaps = {t: sorted(set(range(1, published[t] + 1)) - sent[t])
            for t in TABLES}
    figures["patch_sequence_gaps"] = gaps
    figures["patch_chunks_in_topic"] = transport.end_offsets(
        ["patches"])[("patches", 0)]

    _wait(lambda: _sidecar_applied(metrics_port) == published, 300,
          f"the sidecar to apply sequences {published}", services=(sidecar,))
    figures["sidecar_applied"] = _sidecar_applied(metrics_port)
    figures["sidecar_exit_code"] = sidecar.stop()
    figures["dead_letters"] = transport.end_offsets(
        ["dead-letters"])[("dead-letters", 0)]
    figures["versions"] = sorted(client.status())
    figures["served_version"] = client.served_version()

    # The served rows equal the trainer's last checkpoint.
    final = make_model()
    tables = {t.name: t for t in models.find_tables(final)}
    for table in tables.values():
      table.build(None)
    online.training_checkpoint(final).restore(
        tf_latest(str(ckpt))).expect_partial()
    rows = {}
    for name in TABLES:
      keys = np.sort(tables[name].live_keys().numpy())
      values, _ = tables[name].read_rows(keys)
      served_keys = np.sort(client.table_keys(name))
      served, present = client.rows(name, keys)
      rows[name] = {
          "keys": int(len(keys)),
          "served_keys": int(len(served_keys)),
          "missing": int((~present).sum()),
          "trainer_checksum": _checksum(keys, values.numpy()),
          "served_checksum": _checksum(keys, served),
          "keys_equal": bool(np.array_equal(keys, served_keys)),
      }
    figures["rows"] = rows
  finally:
    load.stop()
    for service in services:
      service.wanted = False
      if service.process is not None and service.process.poll() is None:
        service.process.kill()
        service.process.wait()
    client.close()
    server.close()
    broker.close()

  figures["trainer"] = {"starts": trainer.starts, "kills": trainer.kills,
                        "crashes": trainer.crashes}
  figures["sidecar"] = {"starts": sidecar.starts, "kills": sidecar.kills,
                        "crashes": sidecar.crashes}
  figures["broker_restarts"] = 1
  checks = {
      "no_example_lost": (figures["examples_send_failed"] == 0 and
                          figures["examples_in_topic"] ==
                          figures["examples_acked"] and
                          figures["examples_trained_to"] ==
                          figures["examples_in_topic"]),
      "no_patch_lost": (figures["sidecar_applied"] == published and all(
          len(g) <= trainer.kills + trainer.crashes for g in gaps.values())),
      "rows_equal": all(r["keys_equal"] and r["missing"] == 0 and
                        r["trainer_checksum"] == r["served_checksum"]
                        for r in rows.values()),
      "new_version_served": (figures["served_version"] or 0) > 1,
      "no_dead_letters": figures["dead_letters"] == 0,
      # Killed processes come back; none should die of the other faults.
      "no_unplanned_restarts": trainer.crashes == 0 and sidecar.crashes == 0,
  }
  figures["checks"] = checks
  figures["ok"] = all(checks.values())
  figures["wall_seconds"] = round(time.monotonic() - started, 1)
  return figures


def tf_latest(directory):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = tf.train.latest_checkpoint(directory)
  if path is None:
    raise RuntimeError(f"no checkpoint in {directory}")
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seconds", type=float, default=300.0,
                      help="how long the load and faults run")
  parser.add_argument("--rate", type=int, default=1000,
                      help="examples per second")
  parser.add_argument("--out", default="runs/soak")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  figures = run(args.seconds, args.rate, args.out, args.seed)
  print(json.dumps(figures, sort_keys=True))
  return 0 if figures["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
