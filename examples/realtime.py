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
"""The real-time loop on MovieLens-100K (`make demo`), and what it pays.

MovieLens ratings, replayed in timestamp order, become the impression and
click streams of a live service (`clicks.click_stream`: an impression per
rating plus sampled unseen movies, a click for ratings >= 4). Then:

1. **Batch start.** The oldest 80 % of the ratings go through the Beam
   joiner pipeline (files -> batch store) and batch training, which writes
   SavedModel version 1 and the online trainer's starting checkpoint.
2. **Serving.** A model server serves that version's base path:
   `tfrs_monolith.serving.model_server`, a local stand-in speaking TF
   Serving's gRPC API (swap in `tensorflow_model_server` in production).
3. **The live loop**, over the newest 20 %, one slice of event time at a
   time (a day by default):
   * the app scores the slice's impressions with the served model (gRPC
     Predict), then logs them and the clicks to the `impressions` and
     `actions` topics;
   * the Beam joiner joins what arrived (`ReadFromTopic` over the new
     offsets -> `JoinPipeline` -> the `examples` topic);
   * the online trainer (`tm.online.OnlineTrainer`, resumed from the batch
     checkpoint) learns from the new examples and publishes a sparse patch
     per table to the `patches` topic; every `--dense-every` slices it
     exports a new SavedModel version;
   * the sidecar (`tm.serving.Sidecar`) applies the patches to the served
     model over gRPC (and replays them onto each new version).
   Topics are file logs by default; `--kafka` runs them through a real
   Kafka broker the project starts on loopback.
4. **Checks.** The joiner's examples equal the stream's labels (count and
   clicks), and the served rows equal the trainer's (checksum).
5. **Evaluation** (`evaluation.py`): collisionless vs hashing at equal
   memory, online vs frozen training per time shard, and the sparse sync
   interval.

It prints a progress line per slice and summary tables, and writes
`results.json` and PNG plots to `--out` (default `runs/demo`).

Usage:

  python examples/realtime.py [--kafka] [--no-evaluation] [--seed 42]
"""

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import sys
import time
import zlib

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # Progress lines only.
# pylint: disable=g-import-not-at-top,wrong-import-position
import clicks  # Imports tfrs_monolith (Keras 2) before TensorFlow.
import movielens

import apache_beam as beam  # pylint: disable=g-bad-import-order
from apache_beam.options.pipeline_options import PipelineOptions
import tensorflow as tf  # pylint: disable=g-bad-import-order

from tfrs_monolith import export  # pylint: disable=g-bad-import-order
from tfrs_monolith import models
from tfrs_monolith import online
from tfrs_monolith import streams
from tfrs_monolith.beam import join as join_lib
from tfrs_monolith.beam import pipelines
from tfrs_monolith.beam import topics as topics_lib
from tfrs_monolith.beam import training
from tfrs_monolith.serving import client as client_lib
from tfrs_monolith.serving import model_server
from tfrs_monolith.serving import sidecar as sidecar_lib
from tfrs_monolith.serving import warmup as warmup_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_NAME = "clicks"
LIVE_FRACTION = 0.2
DEFAULT_SEED = 42
_SCORE_BATCH = 8192


# ------------------------------------------------------------------- helpers


def _write_jsonl(path, values):
  with open(path, "wb") as f:
    for value in values:
      f.write(value + b"\n")


def _start_broker(data_dir):
  """Starts the project's own Kafka broker (scripts/kafka_broker.py)."""
  spec = importlib.util.spec_from_file_location(
      "kafka_broker", ROOT / "scripts" / "kafka_broker.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules["kafka_broker"] = module
  spec.loader.exec_module(module)
  module.fetch(quiet=True)
  broker = module.KafkaBroker(data_dir)
  broker.start()
  return broker


def _table_rows(layer):
  """(keys, values) of every live row of a `CollisionlessEmbedding`."""
  rows = layer.table.live_rows()
  keys = tf.gather(layer.table.row_keys, rows).numpy()
  return keys, tf.gather(layer.embeddings, rows).numpy()


def _checksum(keys, values):
  order = np.argsort(keys)
  return zlib.crc32(np.asarray(keys, "<i8")[order].tobytes() +
                    np.asarray(values, "<f4")[order].tobytes())


def served_equals_trainer(client, model):
  """Per table: live keys of the trainer, served keys, and whether both
  hold the same keys with the same values (checksums)."""
  out = {}
  for layer in models.find_tables(model):
    keys, values = _table_rows(layer)
    served_keys = client.table_keys(layer.name)
    served, present = client.rows(layer.name, keys)
    out[layer.name] = {
        "trainer_keys": int(len(keys)),
        "served_keys": int(len(served_keys)),
        "equal": bool(present.all() and set(served_keys.tolist()) == set(
            keys.tolist()) and _checksum(keys, served) == _checksum(
                keys, values)),
    }
  return out


@dataclasses.dataclass
class _Topics:
  impressions: str
  actions: str
  examples: str
  patches: str
  dead_letters: str


# -------------------------------------------------------------- batch start


def _warmup(stream):
  """TF Serving warm-up requests for every exported version: a
  `serving_default` batch and the sidecar's signatures per table, so that
  a version's first patch is not slowed by its first session run."""
  features = stream.features(slice(0, 64))
  return {warmup_lib.WARMUP_FILE: warmup_lib.warmup_requests(
      MODEL_NAME, {"user_id": features["user_id"].astype(object),
                   "item_id": features["item_id"].astype(object)},
      tables=("user", "item"))}


def batch_start(stream, cut, out, epochs, seed, log):
  """Joins and trains on impressions `[:cut]`; writes version 1 and the
  trainer's starting checkpoint. Returns the batch figures."""
  started = time.perf_counter()
  events = out / "events"
  events.mkdir(parents=True)
  _, n_clicks = stream.click_range(0, cut)
  _write_jsonl(events / "impressions-batch.jsonl",
               stream.impression_events(slice(None, cut)))
  _write_jsonl(events / "actions-batch.jsonl",
               stream.click_events(slice(None, n_clicks)))
  log(f"batch: joining {cut:,} impressions and {n_clicks:,} clicks with "
      "the Beam joiner ...")
  pipelines.run([
      f"--impressions={events / 'impressions-batch.jsonl'}",
      f"--actions={events / 'actions-batch.jsonl'}",
      f"--output={out / 'store' / 'examples'}",
      f"--window_seconds={clicks.JOIN_WINDOW_SECONDS}",
  ], save_main_session=False)
  log(f"batch: training {epochs} epochs on the batch store ...")
  tf.keras.utils.set_random_seed(seed)
  model = clicks.make_model(seed=seed)
  result = training.train(
      model, str(out / "store" / "examples-*"), epochs=epochs,
      batch_size=256, export_dir=str(out / "serving" / MODEL_NAME),
      version=1, checkpoint_dir=str(out / "trainer"),
      assets_extra=_warmup(stream), shuffle_buffer=cut, seed=seed)
  figures = {"impressions": cut, "clicks": int(n_clicks),
             "examples": result.examples,
             "final_loss": result.final_loss,
             "table_sizes": dict(result.table_sizes),
             "seconds": time.perf_counter() - started}
  log(f"batch: {figures['examples']:,} examples, version 1 exported "
      f"({figures['seconds']:.0f} s)")
  return figures


# ------------------------------------------------------------------ the loop


class Loop:
  """The live system of the example, one component per part of DESIGN.md."""

  def __init__(self, out, url, topics, seed, warmup):
    self.url = url
    self.topics = topics
    self.transport = streams.open_transport(url)
    self.transport.create_topics([topics.impressions, topics.actions,
                                  topics.examples, topics.patches,
                                  topics.dead_letters])
    self.producer = self.transport.producer()
    base = out / "serving" / MODEL_NAME
    self.server = model_server.ModelServer(
        str(base), MODEL_NAME, poll_seconds=0.5,
        log_path=str(out / "model_server.log"),
        apply_log=str(out / "model_server_applied.jsonl"))
    self.server.wait_ready(timeout=120)
    self.client = client_lib.ServingClient(self.server.address, MODEL_NAME,
                                           timeout=30.0)
    tf.keras.utils.set_random_seed(seed)
    self.model = clicks.make_model(seed=seed)
    self.trainer = online.OnlineTrainer(
        self.model, self.transport, checkpoint_dir=str(out / "trainer"),
        model_name=MODEL_NAME,
        topics=streams.Topics(examples=topics.examples,
                              patches=topics.patches,
                              dead_letters=topics.dead_letters),
        group_id=f"{topics.examples}-trainer", batch_size=256,
        poll_timeout=0.2, sparse_interval=1e9, dense_interval=1e9,
        export_dir=str(base),
        export_fn=lambda m, path, watermark: export.export_saved_model(
            m, path, watermark, assets_extra=warmup),
        log_interval=1e9)
    if self.trainer.restored_from is None:
      raise RuntimeError("the online trainer found no batch checkpoint")
    self.sidecar = sidecar_lib.Sidecar(
        self.client, self.transport, str(out / "sidecar"),
        topic=topics.patches, dead_letter_topic=topics.dead_letters,
        patch_model=MODEL_NAME, group_id=f"{topics.patches}-sidecar",
        status_interval=0.2, poll_timeout=0.05)
    self._imp_offset = 0
    self._act_offset = 0

  def score(self, features):
    """Served logits of impressions (gRPC Predict on serving_default)."""
    out = []
    for i in range(0, len(features["user_id"]), _SCORE_BATCH):
      reply = self.client.predict({
          "user_id": features["user_id"][i:i + _SCORE_BATCH].astype(object),
          "item_id": features["item_id"][i:i + _SCORE_BATCH].astype(object),
      })
      out.append(np.asarray(reply["outputs"]).reshape([-1]))
    return np.concatenate(out) if out else np.zeros([0], np.float32)

  def publish(self, impressions, actions):
    """The app logs a slice's events (keyed by request id)."""
    for topic, values in ((self.topics.impressions, impressions),
                          (self.topics.actions, actions)):
      for value in values:
        key = json.loads(value)["request_id"].encode("utf-8")
        self.producer.send(topic, value, key=key)
    self.producer.flush()

  def join(self):
    """Runs the Beam joiner over the events that arrived since last time;
    returns how many examples and dead letters it wrote."""
    ends = self.transport.end_offsets([self.topics.impressions,
                                       self.topics.actions])
    imp_end = ends[(self.topics.impressions, 0)]
    act_end = ends[(self.topics.actions, 0)]
    before = self._counts()
    options = PipelineOptions([], runner=pipelines.DEFAULT_RUNNER)
    with beam.Pipeline(options=options) as p:
      impressions = p | "ReadImpressions" >> topics_lib.ReadFromTopic(
          self.url, self.topics.impressions, {0: self._imp_offset},
          {0: imp_end})
      actions = p | "ReadActions" >> topics_lib.ReadFromTopic(
          self.url, self.topics.actions, {0: self._act_offset}, {0: act_end})
      joined = ((impressions, actions) | "Join" >> pipelines.JoinPipeline(
          join_lib.JoinConfig(window_seconds=clicks.JOIN_WINDOW_SECONDS),
          sources=(self.topics.impressions, self.topics.actions)))
      joined["examples"] | "WriteExamples" >> topics_lib.WriteToTopic(
          self.url, self.topics.examples)
      joined["dead_letters"] | "WriteDead" >> topics_lib.WriteToTopic(
          self.url, self.topics.dead_letters)
    self._imp_offset, self._act_offset = imp_end, act_end
    after = self._counts()
    return after[0] - before[0], after[1] - before[1]

  def _counts(self):
    ends = self.transport.end_offsets([self.topics.examples,
                                       self.topics.dead_letters])
    return (ends[(self.topics.examples, 0)],
            ends[(self.topics.dead_letters, 0)])

  def train(self):
    """Trains on every example joined so far, then publishes patches."""
    total = self._counts()[0]
    rows = self.trainer.stats.patch_rows
    # (The idle timeout only guards against examples the trainer
    # dead-letters, which never count as trained.)
    self.trainer.run(max_examples=total, idle_timeout=10.0)
    return self.trainer.stats.patch_rows - rows

  def joined_labels(self):
    """{(request_id, item_id): label} of every example joined so far."""
    spec = {"request_id": tf.io.FixedLenFeature([], tf.string),
            "item_id": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.float32)}
    labels = {}
    with self.transport.consumer([self.topics.examples],
                                 f"{self.topics.examples}-check") as reader:
      total = self._counts()[0]
      while len(labels) < total:
        records = reader.poll(10_000, 1.0)
        if not records:
          break
        for r in records:      # Only the joiner writes here; say if not.
          if not isinstance(r.value, bytes):
            raise streams.MalformedMessage(
                f"{r.topic} offset {r.offset}: not a joined example "
                f"(value {r.value!r})")
        parsed = tf.io.parse_example([r.value for r in records], spec)
        for request, item, label in zip(parsed["request_id"].numpy(),
                                         parsed["item_id"].numpy(),
                                         parsed["label"].numpy()):
          labels[(request.decode(), item.decode())] = float(label)
    return labels

  def export(self):
    """A new SavedModel version (the dense sync); returns its number."""
    return int(os.path.basename(self.trainer.export()))

  def catch_up(self, version=None, timeout=180.0):
    """Steps the sidecar until the served model holds every patch (and
    `version` is served); returns the seconds it took."""
    started = time.monotonic()
    want = {t.name: int(t.patch_sequence.numpy())
            for t in self.trainer.tables}

    def done():
      if version is not None and self.sidecar.served_version != version:
        return False
      applied = self.sidecar.applied_sequences
      return all(applied.get(name, 0) >= s for name, s in want.items())

    while not done():
      if time.monotonic() - started > timeout:
        raise RuntimeError(f"the sidecar did not catch up in {timeout} s: "
                           f"{self.sidecar.metrics()}")
      self.sidecar.step()
    return time.monotonic() - started

  def close(self):
    for close in (self.sidecar.close, self.trainer.close, self.client.close,
                  self.server.close, self.producer.close):
      with contextlib.suppress(Exception):
        close()


def _slices(stream, start, slice_seconds):
  """(impression range, click range) of each event-time slice after
  `start`."""
  times = stream.event_time[start:]
  slot = (times - times[0]) // slice_seconds
  bounds = start + np.concatenate(
      [[0], np.flatnonzero(np.diff(slot)) + 1, [len(times)]])
  return [((int(a), int(b)), stream.click_range(a, b))
          for a, b in zip(bounds[:-1], bounds[1:])]


def run_loop(stream, out, url, topics, seed, slice_hours, dense_every,
             frozen_scores, cut, log):
  """The live loop (see the module doc); returns its figures."""
  loop = Loop(out, url, topics, seed, _warmup(stream))
  slices = _slices(stream, cut, int(slice_hours * 3600))
  rows = []
  versions = [1]
  served_all = []
  try:
    for k, ((a, b), (c0, c1)) in enumerate(slices):
      started = time.perf_counter()
      features = stream.features(slice(a, b))
      served = loop.score(features)
      served_all.append(served)
      loop.publish(stream.impression_events(slice(a, b)),
                   stream.click_events(slice(c0, c1)))
      examples, dead = loop.join()
      patch_rows = loop.train()
      version = None
      if dense_every and (k + 1) % dense_every == 0 and k + 1 < len(slices):
        version = loop.export()
        versions.append(version)
      sync_seconds = loop.catch_up(version)
      labels = features["label"]
      row = {
          "slice": k, "start": int(features["event_time"][0]),
          "impressions": int(b - a), "clicks": int(c1 - c0),
          "examples": int(examples), "dead_letters": int(dead),
          "served_auc": clicks.auc(labels, served),
          "frozen_auc": clicks.auc(labels, frozen_scores[a - cut:b - cut]),
          "patch_rows": int(patch_rows), "sync_seconds": sync_seconds,
          "new_version": version, "seconds": time.perf_counter() - started,
      }
      rows.append(row)
      day = time.strftime("%Y-%m-%d", time.gmtime(row["start"]))
      log(f"slice {k + 1:>3}/{len(slices)} {day}: {row['impressions']:>5} "
          f"impressions, {row['clicks']:>4} clicks -> {examples:>5} "
          f"examples; served AUC {row['served_auc']:.3f} (frozen v1 "
          f"{row['frozen_auc']:.3f}); patches {patch_rows:>4} rows, served "
          f"in {sync_seconds:.2f} s" +
          (f"; version {version} loaded" if version else "") +
          f" ({row['seconds']:.1f} s)")
    consistency = served_equals_trainer(loop.client, loop.model)
    sidecar = loop.sidecar.metrics()
    trainer = loop.trainer.metrics()
    joined = loop.joined_labels()
  finally:
    loop.close()
  expected = {(f"q{r}", item): float(label) for r, item, label in zip(
      stream.request[cut:], stream.item_id[cut:], stream.label[cut:])}
  return {
      "slices": rows, "versions": versions, "consistency": consistency,
      "sidecar": {k: v for k, v in sidecar.items()
                  if isinstance(v, (int, float))},
      "trainer": {k: v for k, v in trainer.items()
                  if isinstance(v, (int, float))},
      "impressions": int(sum(r["impressions"] for r in rows)),
      "clicks": int(sum(r["clicks"] for r in rows)),
      "examples": int(sum(r["examples"] for r in rows)),
      "dead_letters": int(sum(r["dead_letters"] for r in rows)),
      "joined_labels_equal_stream": joined == expected,
      "joined_clicks": int(sum(joined.values())),
      "served_auc": clicks.auc(stream.label[cut:],
                               np.concatenate(served_all)),
      "frozen_auc": clicks.auc(stream.label[cut:], frozen_scores),
  }


# --------------------------------------------------------------------- main


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", type=pathlib.Path,
                      default=movielens.DEFAULT_DATA_DIR)
  parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" /
                      "demo", help="results, plots and the run's state "
                      "(emptied first; default: %(default)s)")
  parser.add_argument("--kafka", action="store_true",
                      help="run the topics through the project's Kafka "
                      "broker (started on 127.0.0.1) instead of file logs")
  parser.add_argument("--kafka-bootstrap", default=None,
                      help="use this running Kafka broker instead")
  parser.add_argument("--max-ratings", type=int, default=None,
                      help="use only the oldest N ratings (default: all)")
  parser.add_argument("--negatives", type=int,
                      default=clicks.DEFAULT_NEGATIVES,
                      help="sampled unseen movies shown per rating")
  parser.add_argument("--slice-hours", type=float, default=24.0,
                      help="event time per step of the live loop")
  parser.add_argument("--dense-every", type=int, default=14,
                      help="export a new SavedModel version every N "
                      "slices (0: never)")
  parser.add_argument("--epochs", type=int, default=3,
                      help="epochs of batch training")
  parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
  parser.add_argument("--no-loop", action="store_true",
                      help="skip the live loop (evaluation only)")
  parser.add_argument("--no-evaluation", action="store_true",
                      help="skip the comparisons (live loop only)")
  parser.add_argument("--quick", action="store_true",
                      help="smaller comparisons (fewer sizes, shards and "
                      "epochs), for smoke tests")
  args = parser.parse_args(argv)
  if args.max_ratings is not None and args.max_ratings < 1000:
    parser.error("--max-ratings must be >= 1000")
  if args.negatives < 0:
    parser.error("--negatives must be >= 0")
  if not args.slice_hours > 0:
    parser.error("--slice-hours must be > 0")
  for flag in ("dense_every", "seed"):
    if getattr(args, flag) < 0:
      parser.error(f"--{flag.replace('_', '-')} must be >= 0")
  if args.epochs < 1:
    parser.error("--epochs must be >= 1")
  return args


def _frozen_scores(out, features):
  """Logits of version 1 (the batch model, never updated)."""
  loaded = tf.saved_model.load(str(out / "serving" / MODEL_NAME / "1"))
  serve = loaded.signatures["serving_default"]
  parts = []
  for i in range(0, len(features["user_id"]), _SCORE_BATCH):
    parts.append(serve(
        user_id=tf.constant(features["user_id"][i:i + _SCORE_BATCH]),
        item_id=tf.constant(features["item_id"][i:i + _SCORE_BATCH]),
    )["outputs"].numpy().reshape([-1]))
  return np.concatenate(parts)


def main(argv=None):
  """Runs the example; returns the results (also in `<out>/results.json`)."""
  args = _parse_args(argv)
  started = time.perf_counter()
  tf.get_logger().setLevel("ERROR")

  def log(message):
    print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

  out = args.out.resolve()
  if out.exists():
    shutil.rmtree(out)
  out.mkdir(parents=True)
  users, items, ratings, timestamps = movielens.load_ratings(args.data_dir)
  if args.max_ratings is not None:
    users, items, ratings, timestamps = (
        a[:args.max_ratings] for a in (users, items, ratings, timestamps))
  stream = clicks.click_stream(users, items, ratings, timestamps,
                               negatives=args.negatives, seed=args.seed)
  requests = len(users)
  cut = stream.newest(LIVE_FRACTION)
  log(f"{requests:,} ratings -> {len(stream):,} impressions "
      f"({args.negatives} sampled negatives per rating), "
      f"{len(stream.click_request):,} clicks; seed {args.seed}")
  results = {"args": {k: str(v) if isinstance(v, pathlib.Path) else v
                      for k, v in vars(args).items()},
             "data": {"ratings": requests, "impressions": len(stream),
                      "clicks": len(stream.click_request),
                      "live_from": cut}}

  if not args.no_loop:
    broker = None
    try:
      if args.kafka_bootstrap:
        url = f"kafka://{args.kafka_bootstrap}"
      elif args.kafka:
        log("starting the project's Kafka broker ...")
        broker = _start_broker(out / "kafka")
        url = f"kafka://{broker.bootstrap_servers}"
      else:
        url = f"file://{out / 'topics'}"
      run_id = time.strftime("%Y%m%d%H%M%S")
      prefix = f"demo-{run_id}-" if url.startswith("kafka") else ""
      topics = _Topics(*(prefix + name for name in (
          "impressions", "actions", "examples", "patches", "dead-letters")))
      results["batch"] = batch_start(stream, cut, out, args.epochs,
                                     args.seed, log)
      live = stream.features(slice(cut, None))
      frozen = _frozen_scores(out, live)
      log(f"live loop over {len(stream) - cut:,} impressions, "
          f"{args.slice_hours:g} h of event time per step, through {url}")
      loop = run_loop(stream, out, url, topics, args.seed, args.slice_hours,
                      args.dense_every, frozen, cut, log)
      results["loop"] = loop
      results["loop"]["transport"] = url.split(":")[0]
      _check_loop(results, stream, cut)
    finally:
      if broker is not None:
        broker.stop()

  if not args.no_evaluation:
    import evaluation  # pylint: disable=g-import-not-at-top
    results["evaluation"] = evaluation.run_all(stream, args.seed, args.quick,
                                               str(out), log)
  results["seconds"] = time.perf_counter() - started
  with open(out / "results.json", "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1, default=float)
  import report  # pylint: disable=g-import-not-at-top
  results["plots"] = report.plots(results, out)
  print()
  print(report.summary(results))
  return results


def _check_loop(results, stream, cut):
  """The joiner's examples must be the stream's labelled impressions."""
  loop = results["loop"]
  first, stop = stream.click_range(cut, len(stream))
  expected = {"impressions": len(stream) - cut, "clicks": stop - first}
  checks = {
      "examples_equal_impressions":
          loop["examples"] == expected["impressions"] ==
          loop["impressions"],
      "clicks_published": loop["clicks"] == expected["clicks"],
      "joined_labels_equal_stream": loop["joined_labels_equal_stream"],
      "joined_clicks_equal_clicks": loop["joined_clicks"] == loop["clicks"],
      "no_dead_letters": loop["dead_letters"] == 0,
      "served_equals_trainer": all(
          t["equal"] for t in loop["consistency"].values()),
      "batch_examples_equal_impressions":
          results["batch"]["examples"] == cut,
  }
  loop["checks"] = checks


if __name__ == "__main__":
  main()
