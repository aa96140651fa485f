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
"""The online trainer: learns from the `examples` stream, publishes patches.

`OnlineTrainer` reads serialized `tf.train.Example`s from a topic in
mini-batches, trains a TFRS model with `tm.CollisionlessEmbedding` tables
one step per batch, moves the tables' clocks with the examples' event time
and expires idle ids. Every `sparse_interval` seconds it publishes one
`tm.EmbeddingPatch` per table (rows touched since the previous patch, plus
evicted ids) to the `patches` topic, then checkpoints model, tables and
input offsets together and commits the offsets. Every `dense_interval`
seconds it exports a full SavedModel version for TF Serving.

Crash safety: the checkpoint is the truth. A trainer killed at any point
restarts from its last checkpoint and re-reads every example after it, so
no example is lost. Patches published after that checkpoint are published
again, with new sequence numbers (the last published sequence of each table
is kept on disk), so a replica that applies patches in order ends equal to
the trainer: applying a patch is an idempotent upsert.
"""

import dataclasses
import json
import logging
import os
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfrs_monolith import embedding
from tfrs_monolith import models
from tfrs_monolith import patch as patch_lib
from tfrs_monolith import streams

__all__ = ["OnlineTrainer", "DEFAULT_FEATURE_SPEC", "TrainerStats",
           "save_initial_checkpoint", "training_checkpoint"]

_LOG = logging.getLogger("tfrs_monolith.online")
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

# The `examples` schema written by the joiner (one example per impression).
DEFAULT_FEATURE_SPEC = {
    "user_id": tf.io.FixedLenFeature([], tf.string),
    "item_id": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.float32),
    "event_time": tf.io.FixedLenFeature([], tf.int64),
    "sample_rate": tf.io.FixedLenFeature([], tf.float32, default_value=1.0),
}


@dataclasses.dataclass
class TrainerStats:
  """Counters of one trainer process (since it started)."""
  examples: int = 0
  batches: int = 0
  dead_letters: int = 0
  patches: int = 0
  patch_bytes: int = 0
  patch_rows: int = 0
  checkpoints: int = 0
  exports: int = 0
  last_loss: float = float("nan")
  started_at: float = dataclasses.field(default_factory=time.monotonic)


def _any_batch_spec(value):
  """The type spec of `value` with an unknown batch size."""
  spec = tf.type_spec_from_value(value)
  shape = tf.TensorShape([None]).concatenate(spec.shape[1:])
  if isinstance(value, tf.RaggedTensor):
    return tf.RaggedTensorSpec(shape, spec.dtype, spec.ragged_rank,
                               spec.row_splits_dtype)
  if isinstance(value, tf.SparseTensor):
    return tf.SparseTensorSpec(shape, spec.dtype)
  return tf.TensorSpec(shape, spec.dtype)


def _offset_name(tp):
  return f"{tp[0]}/{tp[1]}"


def training_checkpoint(model: tf.keras.Model) -> tf.train.Checkpoint:
  """The checkpoint the online trainer saves and restores: the model (with
  its tables), its optimizer and the input offsets (JSON in a string
  variable, `input_offsets`)."""
  offsets = tf.Variable("{}", dtype=tf.string, trainable=False,
                        name="input_offsets")
  return tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                             input_offsets=offsets)


def save_initial_checkpoint(model: tf.keras.Model, checkpoint_dir: str) -> str:
  """Saves `model` (trained offline) where an `OnlineTrainer` with the same
  `checkpoint_dir` starts from it; returns the checkpoint path.

  The checkpoint has no input offsets: the trainer starts at its consumer
  group's committed offsets (or the beginning of the topic).
  """
  for table in models.find_tables(model):
    table.build(None)
  manager = tf.train.CheckpointManager(training_checkpoint(model),
                                       checkpoint_dir, max_to_keep=None)
  return manager.save()


class OnlineTrainer:
  """Trains a model on a stream of examples and publishes sparse patches.

  Example:

  ```python
  transport = tm.streams.open_transport("kafka://127.0.0.1:9092")
  trainer = tm.online.OnlineTrainer(model, transport,
                                    checkpoint_dir="/tmp/trainer",
                                    sparse_interval=60)
  trainer.run()          # until stopped (SIGTERM / `trainer.stop()`)
  ```

  Args:
    model: a compiled Keras model (typically a `tm.Model`) whose
      `train_step` takes the parsed feature dict, with one or more
      `tm.CollisionlessEmbedding` tables.
    transport: a `tm.streams.Transport`.
    checkpoint_dir: where checkpoints (model, tables, optimizer, input
      offsets) and the last published patch sequences live.
    model_name: recorded in patches (and the export directory name).
    topics: topic names (`tm.streams.Topics`).
    group_id: consumer group whose offsets the trainer commits.
    feature_spec: `tf.io.parse_example` spec of the examples; default
      `DEFAULT_FEATURE_SPEC`.
    time_feature: int64 feature holding the event time (seconds); None to
      use wall time.
    batch_size: examples per training step (at most).
    poll_timeout: seconds to wait for a full batch before training on what
      arrived.
    sparse_interval: seconds between patches.
    dense_interval: seconds between full SavedModel exports (needs
      `export_dir` and `export_fn`).
    export_dir: TF Serving base path for exported versions.
    export_fn: `export_fn(model, path, watermark)` writes one version.
    max_chunk_bytes: patch chunk size (one Kafka message each).
    log_interval: seconds between progress logs and TensorBoard summaries.
    summary_dir: TensorBoard log directory (None: no summaries).
    max_to_keep: checkpoints kept.
    patch_keys: a `tm.PatchKeys` that signs every patch (HMAC-SHA256);
      None publishes unsigned patches.
  """

  def __init__(self,
               model: tf.keras.Model,
               transport: streams.Transport,
               checkpoint_dir: str,
               model_name: str = "model",
               topics: streams.Topics = streams.Topics(),
               group_id: str = "online-trainer",
               feature_spec: Optional[Mapping] = None,
               time_feature: Optional[str] = "event_time",
               batch_size: int = 256,
               poll_timeout: float = 0.5,
               sparse_interval: float = 60.0,
               dense_interval: float = 3600.0,
               export_dir: Optional[str] = None,
               export_fn: Optional[Callable] = None,
               max_chunk_bytes: int = patch_lib.DEFAULT_CHUNK_BYTES,
               log_interval: float = 10.0,
               summary_dir: Optional[str] = None,
               max_to_keep: int = 3,
               patch_keys: Optional[patch_lib.PatchKeys] = None):
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError("`batch_size` must be a positive integer. Received: "
                       f"batch_size={batch_size!r}")
    for name, value in (("sparse_interval", sparse_interval),
                        ("dense_interval", dense_interval),
                        ("poll_timeout", poll_timeout),
                        ("log_interval", log_interval)):
      if isinstance(value, bool) or not isinstance(
          value, (int, float)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number of seconds. "
                         f"Received: {name}={value!r}")
    if getattr(model, "optimizer", None) is None:
      raise ValueError("`model` must be compiled (model.compile("
                       "optimizer=...)) before it is given to OnlineTrainer")
    self.model = model
    self.transport = transport
    self.model_name = model_name
    self.topics = topics
    self.group_id = group_id
    self.feature_spec = dict(feature_spec or DEFAULT_FEATURE_SPEC)
    if time_feature is not None and time_feature not in self.feature_spec:
      raise ValueError(f"`time_feature` {time_feature!r} is not in "
                       f"`feature_spec` ({sorted(self.feature_spec)})")
    self.time_feature = time_feature
    self.batch_size = batch_size
    self.poll_timeout = float(poll_timeout)
    self.sparse_interval = float(sparse_interval)
    self.dense_interval = float(dense_interval)
    self.export_dir = export_dir
    self.export_fn = export_fn
    self.max_chunk_bytes = max_chunk_bytes
    if patch_keys is not None and (
        not isinstance(patch_keys, patch_lib.PatchKeys) or
        patch_keys.sign_with is None):
      raise ValueError("`patch_keys` must be a tm.PatchKeys with a signing "
                       f"key (sign_with). Received: patch_keys={patch_keys!r}")
    self.patch_keys = patch_keys
    self.log_interval = float(log_interval)
    self.stats = TrainerStats()
    self._stop = threading.Event()

    self.tables = models.find_tables(model)
    for table in self.tables:
      table.build(None)     # Table state exists before any restore.
    if not self.tables:
      raise ValueError("`model` has no tm.CollisionlessEmbedding table")
    names = [t.name for t in self.tables]
    if len(set(names)) != len(names):
      raise ValueError(f"table names must be unique to address patches: "
                       f"{names}")
    self._required = [
        name for name, spec in self.feature_spec.items()
        if isinstance(spec, tf.io.FixedLenFeature) and
        spec.default_value is None
    ]

    os.makedirs(checkpoint_dir, exist_ok=True)
    self.checkpoint_dir = checkpoint_dir
    self._checkpoint = training_checkpoint(model)
    self._offsets = self._checkpoint.input_offsets
    self._manager = tf.train.CheckpointManager(self._checkpoint,
                                               checkpoint_dir,
                                               max_to_keep=max_to_keep)
    self._published_path = os.path.join(checkpoint_dir, "published.json")

    transport.create_topics([topics.examples, topics.patches,
                             topics.dead_letters])
    self._producer = transport.producer()
    self._dead = streams.DeadLetterQueue(self._producer, topics.dead_letters)
    self._consumer = transport.consumer([topics.examples], group_id)
    self.restored_from = self._restore()
    self._step = None     # Traced on the first batch, for any batch size.
    # Under ParameterServerStrategy (a model built in its scope), steps are
    # scheduled on the workers and run concurrently; `sync` waits for them
    # before it reads the tables.
    strategy = model.distribute_strategy
    self._coordinator = None
    if isinstance(strategy,
                  tf.distribute.experimental.ParameterServerStrategy):
      self._coordinator = (
          tf.distribute.experimental.coordinator.ClusterCoordinator(strategy))
    self._pending = None
    self._writer = (tf.summary.create_file_writer(summary_dir)
                    if summary_dir else None)
    self._last_log = (time.monotonic(), 0)
    self._last_admission = self._admission_counts()

  # -------------------------------------------------------------- state

  def _restore(self) -> Optional[str]:
    path = self._manager.latest_checkpoint
    if path is None:
      return None
    self._checkpoint.restore(path)
    for layer in self.tables:
      rewritten = int(layer.table.rewrite_empty_slots())
      if rewritten:
        _LOG.info("%s: gave %d empty index slots their empty key",
                  layer.name, rewritten)
    offsets = json.loads(self._offsets.numpy().decode("utf-8"))
    self._consumer.seek({
        (name.rpartition("/")[0], int(name.rpartition("/")[2])): offset
        for name, offset in offsets.items()
    })
    _LOG.info("restored %s; continuing at %s", path, offsets)
    return path

  def _published(self) -> Dict[str, int]:
    if not os.path.exists(self._published_path):
      return {}
    with open(self._published_path, encoding="utf-8") as f:
      return json.load(f)

  def _next_sequences(self):
    """Never reuse a sequence number published before a crash."""
    published = self._published()
    for table in self.tables:
      last = published.get(table.name, 0)
      if int(table.patch_sequence.numpy()) < last:
        table.patch_sequence.assign(last)

  def position(self) -> Dict[str, int]:
    """Next input offset per `topic/partition` (what has been trained)."""
    return {_offset_name(tp): o for tp, o in self._consumer.position().items()}

  # ----------------------------------------------------------- training

  def _train_step(self, features):
    with embedding.learning():
      return self.model.train_step(features)

  def _parse(self, records: List[streams.Record]):
    """Parsed feature batch of the good records; bad ones dead-lettered."""
    # The common case: every record is good, one op parses them all. Records
    # `streams.parse_example` refuses before parsing (tombstones, oversize
    # messages) go the slow way, so that they are refused in any batch.
    if all(isinstance(r.value, bytes) and
           len(r.value) <= streams.MAX_EXAMPLE_BYTES for r in records):
      try:
        return tf.io.parse_example([r.value for r in records],
                                   self.feature_spec)
      except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
        pass   # (The op's error message may quote undecodable bytes.)
    good = []
    for record in records:
      try:
        streams.parse_example(record.value, self._required)
      except streams.MalformedMessage as error:
        self._dead.send(record, str(error))
        continue
      good.append(record)
    if not good:
      return None
    try:
      return tf.io.parse_example([r.value for r in good], self.feature_spec)
    except tf.errors.InvalidArgumentError:
      pass
    # Some example does not match the spec: find it, keep the others.
    kept = []
    for record in good:
      try:
        tf.io.parse_example([record.value], self.feature_spec)
        kept.append(record)
      except tf.errors.InvalidArgumentError as error:
        self._dead.send(record, f"bad feature: {error.message}")
      except UnicodeDecodeError:
        self._dead.send(record, "bad feature: does not match the spec")
    if not kept:
      return None
    return tf.io.parse_example([r.value for r in kept], self.feature_spec)

  def train_batch(self, records: List[streams.Record]) -> Optional[dict]:
    """Trains one step on `records`; returns the step's metrics."""
    features = self._parse(records)
    if features is None:
      return None
    if self.time_feature is not None:
      now = int(np.max(features[self.time_feature].numpy()))
      for table in self.tables:
        table.advance_clock(now)
    if self._step is None:
      step = self._train_step
      if self._coordinator is not None:
        strategy = self.model.distribute_strategy
        step = lambda f: strategy.run(self._train_step, args=(f,))
      self._step = tf.function(step, input_signature=[
          tf.nest.map_structure(_any_batch_spec, features)])
    n = int(tf.shape(next(iter(features.values())))[0])
    self.stats.examples += n
    self.stats.batches += 1
    if self._coordinator is not None:
      # Runs on a worker; its logs are read when the workers are joined.
      self._pending = self._coordinator.schedule(self._step,
                                                 args=(features,))
      return None
    logs = self._step(features)
    if "loss" in logs:
      self.stats.last_loss = float(logs["loss"])
    return logs

  def join(self):
    """Waits until every scheduled step has run (with workers: before the
    tables are read). Raises the error of a step that failed."""
    if self._coordinator is None:
      return
    self._coordinator.join()
    if self._pending is not None:
      logs = self._pending.fetch()
      if isinstance(logs, dict) and "loss" in logs:
        self.stats.last_loss = float(logs["loss"])
      self._pending = None

  # ------------------------------------------------------------ patches

  def publish_patches(self) -> List[patch_lib.EmbeddingPatch]:
    """Expires idle ids, then publishes one patch per table (flushed)."""
    self.join()
    watermark = self.position()
    out = []
    for table in self.tables:
      if table.ttl_seconds is not None:
        table.expire()
      out.append(table.export_patch(self.model_name, watermark))
    # Durable before anything is sent: a trainer killed after sending and
    # restarted from the previous checkpoint must not publish these
    # sequence numbers again with other rows (a reader would take the
    # second copy for a replay). A crash before sending leaves a gap,
    # which readers report; the next patch carries the rows again.
    streams.write_json_atomic(
        self._published_path, {p.table_name: p.sequence for p in out})
    for patch in out:
      # Keyed by table: a table's patches share a partition, so readers
      # see them in sequence order however many partitions the topic has.
      key = f"{patch.model_name}/{patch.table_name}".encode("utf-8")
      for chunk in patch.to_chunks(self.max_chunk_bytes, keys=self.patch_keys):
        self._producer.send(self.topics.patches, chunk, key=key)
        self.stats.patch_bytes += len(chunk)
      self.stats.patches += 1
      self.stats.patch_rows += len(patch)
    self._producer.flush()
    return out

  def checkpoint(self) -> str:
    """Saves model, tables and input offsets; commits the offsets."""
    self.join()
    position = self._consumer.position()
    self._offsets.assign(json.dumps(
        {_offset_name(tp): o for tp, o in position.items()}))
    path = self._manager.save()
    self._consumer.commit(position)
    self.stats.checkpoints += 1
    return path

  def sync(self):
    """Publishes patches, then checkpoints (one sparse sync)."""
    self._producer.flush()          # Dead letters of the trained batches.
    patches = self.publish_patches()
    self.checkpoint()
    return patches

  def export(self) -> Optional[str]:
    """Writes the next SavedModel version under `export_dir`."""
    if self.export_dir is None or self.export_fn is None:
      return None
    version = int(time.time())
    path = os.path.join(self.export_dir, str(version))
    while os.path.exists(path):
      version += 1
      path = os.path.join(self.export_dir, str(version))
    self.join()
    watermark = {t.name: int(t.patch_sequence.numpy()) for t in self.tables}
    self.export_fn(self.model, path, watermark)
    self.stats.exports += 1
    return path

  # ---------------------------------------------------------------- loop

  def stop(self):
    """Asks `run` to finish after the current step (then it syncs)."""
    self._stop.set()

  def run(self, max_examples: Optional[int] = None,
          idle_timeout: Optional[float] = None):
    """Trains until stopped, `max_examples` are trained, or no example
    arrived for `idle_timeout` seconds; syncs once more before returning.

    Returns:
      `self.stats`.
    """
    self._next_sequences()
    now = time.monotonic()
    next_sparse = now + self.sparse_interval
    next_dense = now + self.dense_interval
    last_data = now
    while not self._stop.is_set():
      want = self.batch_size
      if max_examples is not None:
        want = min(want, max_examples - self.stats.examples)
        if want <= 0:
          break
      records = self._consumer.poll(want, self.poll_timeout)
      now = time.monotonic()
      if records:
        last_data = now
        self.train_batch(records)
      elif idle_timeout is not None and now - last_data >= idle_timeout:
        break
      if now >= next_sparse:
        self.sync()
        next_sparse = now + self.sparse_interval
      if now >= next_dense:
        self.export()
        next_dense = now + self.dense_interval
      if now - self._last_log[0] >= self.log_interval:
        self._log(now)
    self.sync()
    return self.stats

  def _admission_counts(self):
    return {t.name: t.admission_counts() for t in self.tables}

  def metrics(self) -> Dict[str, float]:
    """Current figures: examples, loss, tables, admission, patches, lag.

    `<table>/admission_rate` is the share of ids looked up in training
    since the previous call that had a row; `<table>/admission_halvings`
    (tables with `min_count > 1`) how often its admission counts have
    halved since the start (`admission_window`).
    """
    self.stats.dead_letters = self._dead.total
    counts = self._admission_counts()
    out = {
        "examples": self.stats.examples,
        "loss": self.stats.last_loss,
        "dead_letters": self._dead.total,
        "patches": self.stats.patches,
        "patch_bytes": self.stats.patch_bytes,
        "patch_rows": self.stats.patch_rows,
    }
    for table in self.tables:
      out[f"{table.name}/size"] = int(table.table.size())
      out[f"{table.name}/load_factor"] = float(table.table.load_factor())
      out[f"{table.name}/rejected"] = int(table.table.rejected.numpy())
      ids = counts[table.name][0] - self._last_admission[table.name][0]
      misses = counts[table.name][1] - self._last_admission[table.name][1]
      out[f"{table.name}/admission_rate"] = (1.0 - misses / ids
                                             if ids else float("nan"))
      if table.min_count > 1:
        out[f"{table.name}/admission_halvings"] = table.admission_halvings()
    self._last_admission = counts
    try:
      ends = self._consumer.end_offsets(
          timeout=streams.KAFKA_BEST_EFFORT_SECONDS)
      position = self._consumer.position()
      out["lag_examples"] = sum(max(0, end - position.get(tp, 0))
                                for tp, end in ends.items())
    except Exception:  # pylint: disable=broad-except
      pass          # Lag is informative only; never stop training for it.
    return out

  def _log(self, now):
    then, examples = self._last_log
    rate = (self.stats.examples - examples) / max(now - then, 1e-9)
    self._last_log = (now, self.stats.examples)
    figures = self.metrics()
    figures["examples_per_s"] = rate
    _LOG.info("trainer: %s", ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in figures.items()))
    if self._writer is not None:
      # tf.summary.write with the scalars plugin's metadata: what
      # tf.summary.scalar writes, without needing the tensorboard package.
      with self._writer.as_default(step=self.stats.examples):
        for name, value in figures.items():
          tf.summary.write(name, tf.constant(float(value), tf.float32),
                           metadata=_SCALAR_METADATA)
      self._writer.flush()

  def close(self):
    """Releases the consumer and producer."""
    try:
      self._producer.close()
    finally:
      self._consumer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
