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
"""Benchmarks freshness: an event produced -> the served score changes.

The whole real-time loop runs, on this machine:

  producer -> Kafka `examples` -> `OnlineTrainer` (patches every
  `--sparse_interval` s) -> Kafka `patches` -> `Sidecar` -> model server
  (the stand-in `tfrs_monolith.serving.model_server`) -> `serving_default` score.

A real Kafka broker (`scripts/kafka_broker.py`) is started for the run. The
small ranking model of the tests (`tests/online_model.py`: user and item
tables, min count 1, an MLP) is pre-trained on `--background` examples
(tracing the step), exported as version 1 and served; the trainer and the
sidecar then run in background threads.

Each event is one example of a user never seen before (`fresh-<k>`) with a
fixed, already trained item, produced every `--spacing` seconds. Until the
served model has that user's row, the user reads the default (zero) vector,
so its score equals that of a control user that never trains. A poller
sends one batched `serving_default` Predict for the control and every
outstanding pair every `--poll_interval` s; an event's freshness is the
time from just before it was produced to the first reply in which its
score differs (by any amount) from the control's score in the same reply.
(Comparing with the score read before producing would be wrong: the item's
row is patched too, by earlier events, which moves every pending pair's
score before the user's own row arrives. That "naive" figure is reported
beside, for comparison.) Events not seen within `--timeout` s count as
timeouts (+inf in the percentiles).

Where the time goes is measured too, per event (`stages_s`): `produce`
(send + flush), `to_trained` (until the trainer's batch holding it
returned), `to_published` (until the sync publishing it began: the wait for
the sparse tick), `to_applied` (publish, Kafka, the sidecar, until its
`apply_patch` request holding the user's row returned) and `to_observed`
(until the poller saw the change). The first `--warmup` events are not
counted.

Target: p99 <= 5 s at a 1 s sparse interval (printed; not enforced).
The last stdout line is the result as JSON.

Usage:
  python benchmarks/freshness.py [--events 120] [--spacing 0.3]
      [--sparse_interval 1.0]
"""

import argparse
import contextlib
import importlib.util
import logging
import math
import pathlib
import shutil
import sys
import tempfile
import threading
import time
import uuid

import bench_util  # Imports tfrs_monolith before TensorFlow.
import numpy as np
import tensorflow as tf
from tfrs_monolith import export
from tfrs_monolith import hashing
from tfrs_monolith import online
from tfrs_monolith import streams
from tfrs_monolith.serving import client as client_lib
from tfrs_monolith.serving import model_server
from tfrs_monolith.serving import sidecar as sidecar_lib
from tfrs_monolith.serving import warmup

_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The tests' model lives in tests/. Appended (not prepended):
# tests/tfrs_monolith must not shadow the package.
sys.path.append(str(_ROOT / "tests"))
import online_model  # pylint: disable=g-import-not-at-top,wrong-import-position

MODEL = "ranker"
TARGET_P99_S = 5.0


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--events", type=int, default=120,
                      help="Timed events (fresh users).")
  parser.add_argument("--warmup", type=int, default=3,
                      help="Untimed events first.")
  parser.add_argument("--spacing", type=float, default=0.3,
                      help="Seconds between events.")
  parser.add_argument("--sparse_interval", type=float, default=1.0)
  parser.add_argument("--poll_interval", type=float, default=0.02,
                      help="Seconds between the poller's Predicts.")
  parser.add_argument("--timeout", type=float, default=30.0,
                      help="Seconds after which an event counts as lost.")
  parser.add_argument("--background", type=int, default=512,
                      help="Examples trained before version 1 is exported.")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--item", default="7",
                      help="The item of every event (a trained one).")
  parser.add_argument("--cold", action="store_true",
                      help="Do not compile the padded batch sizes first "
                      "(each size's first batch then compiles, ~0.5 s).")
  parser.add_argument("-v", "--verbose", action="store_true",
                      help="Log the trainer and sidecar at INFO.")
  args = parser.parse_args()
  if args.events < 1 or args.warmup < 0:
    parser.error("--events must be >= 1 and --warmup >= 0")
  return args


def load_kafka_broker_module():
  """scripts/ is no package: load scripts/kafka_broker.py by its path."""
  name = "tfrs_monolith_scripts_kafka_broker"
  module = sys.modules.get(name)
  if module is None:
    spec = importlib.util.spec_from_file_location(
        name, _ROOT / "scripts" / "kafka_broker.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return module


class Event:
  """One fresh user's example and what happened to it."""

  def __init__(self, index, user, value, key):
    self.index = index
    self.user = user
    self.value = value          # The serialized example.
    self.key = key              # The user's int64 table key.
    self.before = None          # Served score before it was produced.
    self.produced = None        # perf_counter just before send.
    self.flushed = None
    self.trained = None         # The trainer's batch holding it returned.
    self.published = None       # The publish of the patch holding it began.
    self.applied = None         # The sidecar's apply_patch holding it.
    self.changed = None         # The poller saw its score change.
    self.naive = None           # First reply differing from `before`.
    self.timed_out = False


class Recorder:
  """Wraps a few methods of the trainer and of the sidecar's client (on
  the instances, the sources are untouched) to time each stage."""

  def __init__(self):
    self.by_value = {}          # Serialized example -> Event.
    self.publishes = []         # (start, end) of publish_patches.
    self.checkpoints = []       # seconds of each checkpoint.
    self.user_applies = []      # (end, keys) of user-table apply_patch.
    self.apply_seconds = []     # (start, seconds) of every apply_patch.
    self.batches = []           # (start, seconds, examples) of train_batch.

  def wrap_trainer(self, trainer):
    train_batch = trainer.train_batch
    publish_patches = trainer.publish_patches
    checkpoint = trainer.checkpoint

    def timed_train_batch(records):
      start = time.perf_counter()
      logs = train_batch(records)
      now = time.perf_counter()
      self.batches.append((start, now - start, len(records)))
      for record in records:
        event = self.by_value.get(record.value)
        if event is not None and event.trained is None:
          event.trained = now
      return logs

    def timed_publish_patches():
      start = time.perf_counter()
      out = publish_patches()
      self.publishes.append((start, time.perf_counter()))
      return out

    def timed_checkpoint():
      start = time.perf_counter()
      out = checkpoint()
      self.checkpoints.append(time.perf_counter() - start)
      return out

    trainer.train_batch = timed_train_batch
    trainer.publish_patches = timed_publish_patches
    trainer.checkpoint = timed_checkpoint

  def wrap_client(self, client):
    apply_patch = client.apply_patch

    def timed_apply_patch(table, keys, *args, **kwargs):
      start = time.perf_counter()
      changed = apply_patch(table, keys, *args, **kwargs)
      end = time.perf_counter()
      self.apply_seconds.append((start, end - start))
      if table == "user":
        self.user_applies.append((end, np.array(keys, np.int64)))
      return changed

    client.apply_patch = timed_apply_patch

  def attribute(self, events):
    """Fills `published` and `applied` of each event."""
    for event in events:
      if event.trained is not None:
        # The trainer trains and publishes in one thread: a batch that
        # returned before a publish began is in that publish.
        for start, _ in self.publishes:
          if start >= event.trained:
            event.published = start
            break
      for end, keys in self.user_applies:
        if end >= event.produced and event.key in keys:
          event.applied = end
          break


class Poller:
  """Polls the served scores of the outstanding events in one batched
  Predict, with a control user that never trains."""

  def __init__(self, client, control, item, interval, timeout):
    self.client = client
    self.control = control
    self.item = item
    self.interval = interval
    self.timeout = timeout
    self.round_trips = []
    self.errors = 0
    self.error = None
    self._pending = {}
    self._lock = threading.Lock()
    self._stop = threading.Event()

  def scores(self, users):
    """Served scores of (control, *users) with the item: [1 + n, 1]."""
    users = [self.control] + list(users)
    outputs = self.client.predict({
        "user_id": np.array([u.encode() for u in users], object),
        "item_id": np.array([self.item.encode()] * len(users), object),
    })["outputs"]
    return np.asarray(outputs, np.float32).reshape([len(users), -1])

  def add(self, event):
    with self._lock:
      self._pending[event.index] = event

  def outstanding(self):
    with self._lock:
      return len(self._pending)

  def stop(self):
    self._stop.set()

  def _done(self, events):
    with self._lock:
      for event in events:
        self._pending.pop(event.index, None)

  def _expire(self, events, now):
    late = [e for e in events
            if e.changed is None and now - e.produced > self.timeout]
    for event in late:
      event.timed_out = True
    self._done(late)

  def run(self):
    while not self._stop.is_set():
      with self._lock:
        events = list(self._pending.values())
      if not events:
        self._stop.wait(self.interval)
        continue
      sent = time.perf_counter()
      try:
        scores = self.scores([e.user for e in events])
      except client_lib.ServingError as error:
        self.errors += 1
        self.error = str(error)
        self._expire(events, time.perf_counter())
        self._stop.wait(self.interval)
        continue
      got = time.perf_counter()
      self.round_trips.append((sent, got - sent))
      control = scores[0]
      done = []
      for event, score in zip(events, scores[1:]):
        if event.naive is None and not np.array_equal(score, event.before):
          event.naive = got
        if not np.array_equal(score, control):
          event.changed = got
          done.append(event)
      self._done(done)
      self._expire(events, got)
      self._stop.wait(max(0.0, self.interval - (time.perf_counter() - sent)))


def warm_batch_sizes(trainer, args):
  """Trains one batch of each padded size (powers of two up to the batch
  size), of known and of new users, so no timed batch compiles: the tables
  probe under XLA, compiled once per padded batch size. Returns seconds."""
  start = time.perf_counter()
  sizes = [1 << i for i in range(args.batch.bit_length())
           if 1 << i <= args.batch]
  if sizes[-1] != args.batch:
    sizes.append(args.batch)
  known = online_model.examples(args.batch, seed=1, start=2_000)
  for size in sizes:
    new = [online_model.example(f"warm-{size}-{j}", args.item, 1.0, 3_000 + j)
           for j in range(size)]
    for values in (new, known[:size]):
      trainer.train_batch([streams.Record("warm", 0, j, None, v, 0)
                           for j, v in enumerate(values)])
  return time.perf_counter() - start


def percentiles(values, points=(50, 90, 99)):
  """Nearest-rank percentiles and max of `values` (inf allowed); None
  stands for inf in the result (JSON has no infinity)."""
  ordered = sorted(values)
  if not ordered:
    return {**{f"p{p}": None for p in points}, "max": None, "mean": None}
  out = {}
  for p in points:
    value = ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
    out[f"p{p}"] = value
  out["max"] = ordered[-1]
  finite = [v for v in ordered if math.isfinite(v)]
  out["mean"] = sum(finite) / len(finite) if finite else math.inf
  return {k: (round(v, 4) if math.isfinite(v) else None)
          for k, v in out.items()}


def stage(events, first, second):
  values = [getattr(e, second) - getattr(e, first) for e in events
            if getattr(e, first) is not None and
            getattr(e, second) is not None]
  if not values:
    return None
  out = percentiles(values, (50, 90))
  out["n"] = len(values)
  return out


def fmt(seconds):
  return "inf" if seconds is None else f"{seconds:.3f}"


class Runner:
  """A thread running `fn`, keeping its exception."""

  def __init__(self, fn, name):
    self.error = None
    self._fn = fn
    self.thread = threading.Thread(target=self._run, name=name, daemon=True)

  def _run(self):
    try:
      self._fn()
    except BaseException as error:  # pylint: disable=broad-except
      self.error = error
      logging.exception("%s failed", self.thread.name)

  def start(self):
    self.thread.start()
    return self

  def check(self):
    if self.error is not None:
      raise RuntimeError(f"{self.thread.name} failed: {self.error!r}") from (
          self.error)


def wait_for(condition, timeout, what, runners=()):
  deadline = time.monotonic() + timeout
  while not condition():
    for runner in runners:
      runner.check()
    if time.monotonic() > deadline:
      raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
    time.sleep(0.05)


def main():
  args = parse_args()
  logging.basicConfig(
      level=logging.INFO if args.verbose else logging.WARNING,
      format="%(asctime)s %(threadName)s %(levelname)s %(message)s")
  wall_start = time.perf_counter()
  prefix = f"fresh-{uuid.uuid4().hex[:8]}"
  topics = streams.Topics(examples=f"{prefix}-examples",
                          patches=f"{prefix}-patches",
                          dead_letters=f"{prefix}-dead-letters")
  print(f"{args.warmup} + {args.events} events every {args.spacing} s, "
        f"patches every {args.sparse_interval} s, Predict polls every "
        f"{args.poll_interval * 1000:.0f} ms", flush=True)

  with contextlib.ExitStack() as stack:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="freshness_"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    base = tmp / "base"
    base.mkdir()

    # The model server first: it imports TensorFlow while the broker starts
    # and the model trains; it loads version 1 when it appears.
    server = model_server.ModelServer(str(base), MODEL, poll_seconds=0.2,
                                      log_path=str(tmp / "server.log"),
                                      apply_log=str(tmp / "applied.jsonl"))
    stack.callback(server.close)

    kafka_broker = load_kafka_broker_module()
    kafka_broker.fetch(quiet=True)
    broker = kafka_broker.KafkaBroker(tmp / "kafka")
    stack.callback(broker.stop)
    started = time.perf_counter()
    broker.start()
    print(f"Kafka broker at {broker.bootstrap_servers} "
          f"({time.perf_counter() - started:.1f} s)", flush=True)
    transport = streams.open_transport(f"kafka://{broker.bootstrap_servers}")
    transport.create_topics([topics.examples, topics.patches,
                             topics.dead_letters])
    producer = transport.producer()
    stack.callback(producer.close)

    # Pre-training: the step is traced, the tables hold users and items.
    started = time.perf_counter()
    for value in online_model.examples(args.background, seed=0,
                                       start=1_000):
      producer.send(topics.examples, value)
    producer.flush()
    model = online_model.Ranking(item_min_count=1)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    trainer = online.OnlineTrainer(
        model, transport, str(tmp / "ckpt"), model_name=MODEL,
        topics=topics, group_id=f"{prefix}-trainer",
        batch_size=args.batch, poll_timeout=0.05,
        sparse_interval=args.sparse_interval)
    stack.callback(trainer.close)
    trainer.run(max_examples=args.background)
    warm_seconds = 0.0 if args.cold else warm_batch_sizes(trainer, args)
    # Warm-up requests: the version's first patch is not slowed by the
    # first run of `apply_patch` in the server's new session.
    export.export_saved_model(model, str(base / "1"), assets_extra={
        warmup.WARMUP_FILE: warmup.warmup_requests(
            MODEL, {"user_id": ["0"], "item_id": ["0"]},
            tables=["user", "item"])})
    print(f"pre-trained on {trainer.stats.examples} examples (batch sizes "
          f"compiled in {warm_seconds:.1f} s) and exported version 1 "
          f"({time.perf_counter() - started:.1f} s)", flush=True)
    started = time.perf_counter()
    server.wait_ready(timeout=180, version=1)
    print(f"version 1 served ({time.perf_counter() - started:.1f} s more)",
          flush=True)

    recorder = Recorder()
    recorder.wrap_trainer(trainer)
    sidecar_client = client_lib.ServingClient(server.address, MODEL,
                                              timeout=10.0)
    stack.callback(sidecar_client.close)
    recorder.wrap_client(sidecar_client)
    sidecar = sidecar_lib.Sidecar(
        sidecar_client, transport, str(tmp / "sidecar"),
        topic=topics.patches, dead_letter_topic=topics.dead_letters,
        group_id=f"{prefix}-sidecar", status_interval=1.0)
    stack.callback(sidecar.close)
    poll_client = client_lib.ServingClient(server.address, MODEL,
                                           timeout=10.0)
    stack.callback(poll_client.close)
    poller = Poller(poll_client, f"{prefix}-control", args.item,
                    args.poll_interval, args.timeout)

    # Stopped in reverse order: poller, trainer, then the sidecar.
    sidecar_thread = Runner(sidecar.run, "sidecar").start()
    stack.callback(sidecar_thread.thread.join, 30)
    stack.callback(sidecar.stop)
    wait_for(lambda: sidecar.healthy and sidecar.served_version == 1, 60,
             "the sidecar to see version 1", [sidecar_thread])
    trainer_thread = Runner(trainer.run, "trainer").start()
    stack.callback(trainer_thread.thread.join, 60)
    stack.callback(trainer.stop)
    wait_for(lambda: sidecar.stats.patches_applied >= 2, 120,
             "the sidecar's first patches", [sidecar_thread, trainer_thread])
    # The server's first `apply_patch` with rows is slow (seconds: its
    # session prepares the signature's graph, and the stand-in has no
    # warm-up request for it); the untimed warm-up events take that hit.
    poller_thread = Runner(poller.run, "poller").start()
    stack.callback(poller_thread.thread.join, 30)
    stack.callback(poller.stop)
    runners = [sidecar_thread, trainer_thread, poller_thread]

    events = []
    default_mismatch = 0
    started = time.perf_counter()
    for k in range(args.warmup + args.events):
      if k == args.warmup:
        # The timed events start once the warm-up ones were all seen.
        wait_for(lambda: poller.outstanding() == 0, args.timeout + 10,
                 "the warm-up events", runners)
        started = time.perf_counter()
      user = f"fresh-{k}"
      event = Event(k, user, online_model.example(
          user, args.item, 1.0, 100_000 + k),
                    int(hashing.to_keys([user]).numpy()[0]))
      recorder.by_value[event.value] = event
      before = poller.scores([user])
      event.before = before[1]
      if not np.array_equal(before[0], before[1]):
        default_mismatch += 1    # A new user should read the control's score.
      event.produced = time.perf_counter()
      producer.send(topics.examples, event.value)
      producer.flush()
      event.flushed = time.perf_counter()
      poller.add(event)
      events.append(event)
      for runner in runners:
        runner.check()
      # Spaced from this event (no burst to catch up after a slow one).
      time.sleep(max(0.0, event.produced + args.spacing -
                     time.perf_counter()))
    wait_for(lambda: poller.outstanding() == 0, args.timeout + 10,
             "the last events", runners)
    produce_seconds = time.perf_counter() - started

    poller.stop()
    poller_thread.thread.join(30)
    trainer.stop()
    trainer_thread.thread.join(60)
    sidecar.stop()
    sidecar_thread.thread.join(30)
    for runner in runners:
      runner.check()
    recorder.attribute(events)
    sidecar_metrics = sidecar.metrics()
    trainer_stats = trainer.stats
  # Everything is stopped and removed here.

  timed = events[args.warmup:]
  latencies = [e.changed - e.produced if e.changed is not None else math.inf
               for e in timed]
  naive = [e.naive - e.produced if e.naive is not None else math.inf
           for e in timed]
  timeouts = sum(1 for e in timed if e.changed is None)
  figures = percentiles(latencies)
  met = figures["p99"] is not None and figures["p99"] <= TARGET_P99_S
  stages = {
      "produce": stage(timed, "produced", "flushed"),
      "to_trained": stage(timed, "flushed", "trained"),
      "to_published": stage(timed, "trained", "published"),
      "to_applied": stage(timed, "published", "applied"),
      "to_observed": stage(timed, "applied", "changed"),
  }
  window = timed[0].produced
  round_trips = [t for s, t in poller.round_trips if s >= window]
  round_trip = percentiles(round_trips, (50, 90, 99))
  batches = [(seconds, n) for start, seconds, n in recorder.batches
             if start >= window]
  sizes = {}
  for _, n in batches:
    sizes[n] = sizes.get(n, 0) + 1
  wall = time.perf_counter() - wall_start

  print(f"{len(timed)} events over {produce_seconds:.1f} s: freshness p50 "
        f"{fmt(figures['p50'])} s, p90 {fmt(figures['p90'])} s, p99 "
        f"{fmt(figures['p99'])} s, max {fmt(figures['max'])} s, mean "
        f"{fmt(figures['mean'])} s; {timeouts} timeouts")
  print("stages (p50 / p90 s): " + ", ".join(
      f"{name} {fmt(s['p50'])} / {fmt(s['p90'])}"
      for name, s in stages.items() if s is not None))
  print(f"poll round trip p50 {fmt(round_trip['p50'])} s over "
        f"{len(round_trips)} Predicts; sidecar applied "
        f"{sidecar_metrics.get('patches_applied', 0):.0f} patches in "
        f"{sidecar_metrics.get('requests', 0):.0f} requests")
  print(f"target p99 <= {TARGET_P99_S} s at a {args.sparse_interval} s "
        f"sparse interval: {'met' if met else 'NOT met'} "
        f"(wall time {wall:.1f} s)", flush=True)
  bench_util.emit({
      "benchmark": "freshness",
      "events": len(timed),
      "warmup_events": args.warmup,
      "cold": args.cold,
      "spacing_s": args.spacing,
      "sparse_interval": args.sparse_interval,
      "poll_interval_s": args.poll_interval,
      "timeouts": timeouts,
      "freshness_s": figures,
      "target_p99_s": TARGET_P99_S,
      "target_met": met,
      "naive_freshness_s": percentiles(naive),
      "default_score_mismatches": default_mismatch,
      "stages_s": stages,
      "poll": {"predicts": len(round_trips),
               "errors": poller.errors,
               "round_trip_ms": {k: None if v is None else round(v * 1000, 2)
                                 for k, v in round_trip.items()}},
      "trainer": {"examples": trainer_stats.examples,
                  "batches": trainer_stats.batches,
                  "patches": trainer_stats.patches,
                  "checkpoints": trainer_stats.checkpoints,
                  "timed_batches": len(batches),
                  "timed_batch_sizes": dict(sorted(sizes.items())),
                  "timed_batch_s": percentiles([b for b, _ in batches],
                                               (50, 90, 99)),
                  "timed_slow_batches": sum(1 for b, _ in batches
                                            if b > 0.25),
                  "publish_s": percentiles(
                      [e - s for s, e in recorder.publishes], (50, 90)),
                  "checkpoint_s": percentiles(recorder.checkpoints,
                                              (50, 90))},
      "sidecar": {k: sidecar_metrics.get(k) for k in (
          "patches_applied", "patches_skipped", "patches_failed",
          "patches_corrupt", "requests", "rows_changed", "replays",
          "serving_errors", "retries", "lag_records", "lag_seconds",
          "lag_sequences", "last_apply_latency_seconds")},
      "apply_patch_ms": {k: None if v is None else round(v * 1000, 2)
                         for k, v in percentiles(
                             [s for t, s in recorder.apply_seconds
                              if t >= window], (50, 90)).items()},
      "wall_s": round(wall, 1),
  })


if __name__ == "__main__":
  sys.exit(main())
