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
"""Implements `CollisionlessEmbedding`, an expiring, collisionless embedding."""

import contextlib
import contextvars
import functools
import math
import numbers
import weakref
from typing import List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

from tfrs_monolith import admission
from tfrs_monolith import hashing
from tfrs_monolith import patch as patch_lib
from tfrs_monolith import table as table_lib

__all__ = ["CollisionlessEmbedding", "learning"]

_LEARNING = contextvars.ContextVar("tfrs_monolith_learning", default=False)
_SERVING = contextvars.ContextVar("tfrs_monolith_serving", default=False)
_INIT_SEED = 0x1A17_0000_0000_0001
_SHARD_SEED = 0x5EED_0000_0000_5A4D
# Standard normal CDF at -2 and 2: bounds of a 2-sigma truncated normal.
_PHI_MINUS_2 = 0.5 * math.erfc(2.0 / math.sqrt(2.0))
_PHI_PLUS_2 = 1.0 - _PHI_MINUS_2


def _cond_as_call(pred, true_fn, false_fn):
  """`tf.cond` that runs only the taken branch, as a function call.

  In a graph, `tf.cond` is normally lowered to switch/merge ops and both
  branches are inlined: every op of the branch not taken still passes a
  dead tensor on, each step. For a branch of hundreds of ops (the insert
  path) that costs more than the taken branch, so the `If` op is kept.
  """
  out = tf.cond(pred, true_fn, false_fn)
  if tf.executing_eagerly():
    return out
  op = out.op
  while op.type not in ("If", "StatelessIf"):
    op = op.inputs[0].op
  op._set_attr("_lower_using_switch_merge",  # pylint: disable=protected-access
               attr_value_pb2.AttrValue(b=False))
  return out


@contextlib.contextmanager
def learning():
  """Within this context, `CollisionlessEmbedding` calls with `training=None`
  learn (admit and insert keys) as if `training=True` had been passed.

  `tfrs_monolith.Model.train_step` enters it, so that TFRS models whose
  `compute_loss` does not forward `training` to their towers still learn.
  """
  token = _LEARNING.set(True)
  try:
    yield
  finally:
    _LEARNING.reset(token)


@contextlib.contextmanager
def serving_graph():
  """Within this context, `CollisionlessEmbedding` lookups are traced
  without XLA, so that the graph runs on a stock `tensorflow_model_server`.

  `tm.export.export_saved_model` traces its signatures inside it; any
  `tf.saved_model.save` (and Keras `model.save`) also gets XLA-free lookups.
  Trace your own serving functions inside it if you save them another way.
  """
  token = _SERVING.set(True)
  try:
    yield
  finally:
    _SERVING.reset(token)


def _xla_allowed() -> bool:
  if _SERVING.get():
    return False
  try:
    # pylint: disable=g-import-not-at-top
    from tensorflow.python.saved_model import save_context
  except ImportError:   # pragma: no cover
    return True
  return not save_context.in_save_context()


def _colocated_with(variable):
  """Under a `tf.distribute` strategy, variables created in this context go
  where `variable` is: with `ParameterServerStrategy`, all of a table's
  state (rows, index, counters; and the optimizer's slots, which follow
  their variable) lives on one parameter server, so that one graph can
  read and update it together."""
  if not tf.distribute.has_strategy():
    return contextlib.nullcontext()
  return tf.distribute.get_strategy().extended.colocate_vars_with(variable)


def _num_parameter_servers() -> int:
  """PS tasks of the `ParameterServerStrategy` in scope (0 if none)."""
  if not tf.distribute.has_strategy():
    return 0
  strategy = tf.distribute.get_strategy()
  if not isinstance(strategy,
                    tf.distribute.experimental.ParameterServerStrategy):
    return 0
  # Private: the public `strategy.cluster_resolver` is None for this
  # strategy (TF 2.21), so the PS count is read where the strategy keeps it.
  return int(strategy.extended._num_ps)  # pylint: disable=protected-access


def _on_device_of(variable):
  """Runs a table's ops where its state is, when that is another task.

  With `ParameterServerStrategy` the table's probe, admission and inserts
  then run on its parameter server, which gets the batch's keys and returns
  row numbers, instead of the worker reading the index over the network
  (and XLA-compiled blocks cannot reach a variable on another task at all).
  Serving graphs are never pinned: a SavedModel must not name cluster tasks.
  """
  if not _is_remote(variable) or not _xla_allowed():
    return contextlib.nullcontext()
  return tf.device(variable.device)


def _is_remote(variable) -> bool:
  """Whether `variable` lives on another task of a cluster."""
  device = variable.device or ""
  return "/job:" in device and "/job:localhost" not in device


def _pad_to_power_of_two(*tensors):
  """Pads 1-D tensors of one dynamic length n (at most 2**30) to the next
  power of two: XLA compiles once per padded size, not once per batch size.
  A few ops, as they run in every training step."""
  n = tf.size(tensors[0])
  powers = tf.constant([1 << i for i in range(31)], tf.int32)
  padded = tf.gather(powers, tf.searchsorted(powers, tf.reshape(n, [1]))[0])
  return [tf.pad(t, [[0, padded - n]]) for t in tensors]


def _padded_call(fn, vectors, *scalars):
  """`fn(*vectors, *scalars)` for an XLA-compiled `fn` whose first output
  has one entry per key. 1-D `vectors` of a dynamic length are padded with
  zeros (`_pad_to_power_of_two`) and that output is cut back to length."""
  if vectors[0].shape[0] is not None:
    return fn(*vectors, *scalars)
  n = tf.size(vectors[0])
  out = fn(*_pad_to_power_of_two(*vectors), *scalars)
  if isinstance(out, tuple):
    return (out[0][:n],) + tuple(out[1:])
  return out[:n]


def _initializer_spec(initializer):
  """(kind, a, b) of a supported Keras initializer, for keyed generation."""
  init = tf.keras.initializers.get(initializer)
  name = type(init).__name__
  if name in ("RandomUniform",):
    return "uniform", float(init.minval), float(init.maxval), init
  if name in ("RandomNormal",):
    return "normal", float(init.mean), float(init.stddev), init
  if name in ("TruncatedNormal",):
    return "truncated_normal", float(init.mean), float(init.stddev), init
  if name in ("Zeros",):
    return "constant", 0.0, 0.0, init
  if name in ("Ones",):
    return "constant", 1.0, 0.0, init
  if name in ("Constant",):
    return "constant", float(init.value), 0.0, init
  raise ValueError(
      "`embeddings_initializer` must be one of 'uniform', 'normal', "
      "'truncated_normal', 'zeros', 'ones', 'constant' (or the matching "
      "tf.keras.initializers object), since rows are initialised per key "
      f"when admitted. Received: embeddings_initializer={initializer!r}")


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(
      value, numbers.Integral) or value < minimum:
    raise ValueError(f"`{name}` must be an integer >= {minimum}. "
                     f"Received: {name}={value!r}")
  return int(value)


class ShardedTableView:
  """`CollisionlessEmbedding.table` of a sharded layer: its shards' tables
  (`tables`), with their sizes summed."""

  def __init__(self, tables: List[table_lib.CuckooHashTable]):
    self.tables = list(tables)

  @property
  def capacity(self) -> int:
    return sum(table.capacity for table in self.tables)

  def size(self) -> tf.Tensor:
    """Number of live keys (int64 scalar)."""
    return tf.add_n([table.size() for table in self.tables])

  def load_factor(self) -> tf.Tensor:
    """Live keys / capacity (float64 scalar)."""
    return tf.cast(self.size(), tf.float64) / self.capacity

  @property
  def rejected(self) -> tf.Tensor:
    """Keys that could not be given a row (full shards), cumulative."""
    return tf.add_n([table.rejected.read_value() for table in self.tables])

  def rewrite_empty_slots(self) -> tf.Tensor:
    """`CuckooHashTable.rewrite_empty_slots` of every shard; the sum."""
    return tf.add_n([table.rewrite_empty_slots() for table in self.tables])


@tf.keras.utils.register_keras_serializable(package="tfrs_monolith")
class CollisionlessEmbedding(tf.keras.layers.Layer):
  """An embedding layer with a collisionless, expiring hash table.

  A drop-in for `tf.keras.layers.Embedding` when ids are unbounded: user ids,
  item ids, or strings. Unlike the hashing trick (`id % buckets`), no two ids
  ever share a row: ids are indexed by a `tm.CuckooHashTable` of `capacity`
  rows, as in ByteDance's Monolith ("Monolith: Real Time Recommendation
  System With Collisionless Embedding Table", Liu et al., 2022).

  * **Admission.** In training, an id gets a row once it has been seen
    `min_count` times, counted in a count-min sketch, so rare ids cost no
    row. Unknown and not-yet-admitted ids read a zero vector and receive no
    update. Inference never inserts.
  * **Expiry.** `expire(now)` evicts ids not seen for `ttl_seconds` of event
    time; their rows return to the free list and start fresh when reused
    (value re-initialised, optimizer state reset).
  * **Full table.** `full_policy="evict_lru"` (default) evicts the least
    recently seen ids to make room; `"error"` raises instead, changing
    nothing. A live id's row is never overwritten.
  * **Sync.** `export_patch()` returns the rows touched since the last call
    and the evicted ids as a `tm.EmbeddingPatch`; `apply_patch()` on a
    replica makes its rows equal.

  Gradients reach the table as `tf.IndexedSlices` over the batch's rows,
  as for `tf.keras.layers.Embedding`. Time is event time: the clock is the
  newest time given to `advance_clock` (the online trainer passes example
  timestamps), or wall time until then.

  New rows are initialised from a hash of (`seed`, id), so a given id always
  starts from the same vector, on any machine.

  Example:

  ```python
  import tensorflow_recommenders as tfrs
  import tfrs_monolith as tm

  class Movielens(tm.Model):        # tfrs.Model + table maintenance
    def __init__(self):
      super().__init__()
      self.user = tm.CollisionlessEmbedding(32, capacity=100_000,
                                            min_count=2, ttl_seconds=86400)
      self.movie = tm.CollisionlessEmbedding(32, capacity=100_000)
      self.task = tfrs.tasks.Retrieval()

    def compute_loss(self, features, training=False):
      return self.task(self.user(features["user_id"], training=training),
                       self.movie(features["movie_id"], training=training))
  ```

  Args:
    output_dim: Dimension of the embedding vectors.
    capacity: Rows of the table: the most ids it holds at once.
    min_count: Occurrences (in training) before an id is admitted; 1 admits
      on first sight and uses no sketch.
    ttl_seconds: Evict ids idle for longer than this (event time) when
      `expire` runs. None never expires.
    embeddings_initializer: Initializer of admitted rows: "uniform"
      (default, [-0.05, 0.05] as in Keras), "normal", "truncated_normal",
      "zeros", "ones", or a matching `tf.keras.initializers` object.
    full_policy: "evict_lru" or "error", see above.
    slots_per_bucket: Slots per cuckoo bucket: 4 (default) reads less per
      lookup, 8 fills a tight index further (see `tm.CuckooHashTable`).
    admission_width: Counters per row of the admission sketch; defaults to
      `max(4096, capacity)`. Unused when `min_count == 1`.
    admission_depth: Rows (hash functions) of the admission sketch.
    admission_window: Occurrences of ids without a row after which the
      admission sketch halves its counts (`tm.CountMinSketch`'s `window`),
      so that an id must reach `min_count` within about that much recent
      traffic and a long stream of rare ids does not saturate the sketch
      and pass admission. Defaults to the sketch's width; 0 keeps counts
      forever (e.g. to add counts up over epochs of a fixed dataset).
    seed: Seed of the per-id initial values.
    jit_compile: Probe the table in an XLA-compiled function (`jit_compile`),
      which is faster on CPU and GPU. Graphs traced for serving
      (`tm.embedding.serving_graph`, `tm.export.export_saved_model`, any
      SavedModel save) never use XLA, so they run on a stock
      `tensorflow_model_server`. Set False where XLA is not available.
    **kwargs: Base `Layer` arguments (`name`, `dtype`, `trainable`).

  Input shape:
    int or string ids of any shape (dense or ragged).

  Output shape:
    `ids.shape + [output_dim]`.
  """

  def __init__(self,
               output_dim: int,
               capacity: int,
               min_count: int = 1,
               ttl_seconds: Optional[float] = None,
               embeddings_initializer="uniform",
               full_policy: str = "evict_lru",
               slots_per_bucket: int = 4,
               admission_width: Optional[int] = None,
               admission_depth: int = 4,
               admission_window: Optional[int] = None,
               seed: int = 0,
               jit_compile: bool = True,
               num_shards: Optional[int] = None,
               **kwargs):
    super().__init__(**kwargs)
    self.output_dim = _check_int("output_dim", output_dim, 1)
    self.capacity = _check_int("capacity", capacity, 1)
    self.min_count = _check_int("min_count", min_count, 1)
    if ttl_seconds is not None and (
        isinstance(ttl_seconds, bool) or
        not isinstance(ttl_seconds, numbers.Real) or ttl_seconds <= 0 or
        not math.isfinite(ttl_seconds)):
      raise ValueError("`ttl_seconds` must be a positive number or None. "
                       f"Received: ttl_seconds={ttl_seconds!r}")
    self.ttl_seconds = ttl_seconds
    self._init_spec = _initializer_spec(embeddings_initializer)
    self.embeddings_initializer = self._init_spec[3]
    if full_policy not in table_lib.FULL_POLICIES:
      raise ValueError(f"`full_policy` must be one of "
                       f"{table_lib.FULL_POLICIES}. Received: "
                       f"full_policy={full_policy!r}")
    self.full_policy = full_policy
    self.slots_per_bucket = _check_int("slots_per_bucket", slots_per_bucket,
                                       1)
    if admission_width is not None:
      admission_width = _check_int("admission_width", admission_width, 1)
    self.admission_width = admission_width
    self.admission_depth = _check_int("admission_depth", admission_depth, 1)
    if admission_window is not None:
      admission_window = _check_int("admission_window", admission_window, 0)
    self.admission_window = admission_window
    self.seed = _check_int("seed", seed, 0)
    if not isinstance(jit_compile, bool):
      raise TypeError("`jit_compile` must be a bool. Received: "
                      f"jit_compile={jit_compile!r}")
    self.jit_compile = jit_compile
    if num_shards is not None:
      num_shards = _check_int("num_shards", num_shards, 1)
      if num_shards > self.capacity:
        raise ValueError(f"`num_shards` must be at most `capacity` "
                         f"({self.capacity}). Received: "
                         f"num_shards={num_shards!r}")
    self.num_shards = num_shards
    # A layer created in a strategy's scope builds its state there, even if
    # it is first called (and built) outside.
    self._strategy = (tf.distribute.get_strategy()
                      if tf.distribute.has_strategy() else None)
    self._optimizer_ref = None
    self._table = None
    self._sketch = None
    self._insert_lock = None
    self._shards = []

  # -------------------------------------------------------------------- state

  def build(self, input_shape=None):
    if self.built:
      return
    if self._strategy is not None and not tf.distribute.has_strategy():
      with self._strategy.scope():
        self.build(input_shape)
      return
    if self.num_shards is None:
      # Under ParameterServerStrategy: one shard per parameter server.
      self.num_shards = max(1, min(_num_parameter_servers(), self.capacity))
    if self.num_shards > 1:
      self._build_shards()
    else:
      self._build_rows()
      with _colocated_with(self.embeddings):
        self._build_state()
    super().build(input_shape)

  def _build_rows(self):
    # Two rows more than `capacity`, never given to a key:
    # * row `capacity` (the template) is never read in training, so it stays
    #   zero and its optimizer state initial: inference reads it for absent
    #   ids and `_reset_rows` copies its optimizer state into reused rows;
    # * row `capacity + 1` (the sink) is what absent ids read in training.
    #   It is zeroed before each read and its gradient is thrown away, which
    #   costs one row instead of masking every vector of the batch.
    self.embeddings = self.add_weight(
        name="embeddings", shape=[self.capacity + 2, self.output_dim],
        initializer="zeros", trainable=True)

  def _build_state(self):
    """The table's state besides its rows: index, sketch, clock, counters."""
    # On a cluster, workers' steps run concurrently on the table's parameter
    # server: inserts (free-row pops, cuckoo moves) must not interleave, or
    # two keys could get one row. Lookups of present keys need no lock.
    self._insert_lock = None
    if _is_remote(self.embeddings):
      with tf.device(self.embeddings.device):
        self._insert_lock = tf.CriticalSection(name="insert_lock")
    self._table = table_lib.CuckooHashTable(
        self.capacity, slots_per_bucket=self.slots_per_bucket,
        full_policy=self.full_policy, name="table")
    if self.min_count > 1:
      width = self.admission_width or max(4096, self.capacity)
      window = (width if self.admission_window is None else
                self.admission_window or None)
      self._sketch = admission.CountMinSketch(
          width, depth=self.admission_depth, window=window, name="admission")
    self._build_clock()
    # Ids looked up in training, and how many of them had no row (not yet
    # admitted, or no room): 1 - misses / ids is the admission rate.
    self.training_ids = self._add_counter("training_ids")
    self.training_misses = self._add_counter("training_misses")
    # The XLA-compiled blocks (used when `jit_compile`), one per layer so
    # that eager calls reuse their compilations. Set past Keras's tracking:
    # they are never saved with the layer.
    # Inference probes with the formulation XLA fuses into one loop; in
    # training, where the rows feed the touch scatters too, XLA splits that
    # one into a gather per slot, and the whole-bucket probe is faster.
    for name, fn in (
        ("_xla_read_index", functools.partial(self._read_index,
                                              compiled=True)),
        ("_xla_probe_touch", self._probe_touch)):
      object.__setattr__(self, name, tf.function(fn, jit_compile=True,
                                                 autograph=False))

  def _build_shards(self):
    """Builds `num_shards` tables, each holding the keys that hash to it.

    Each shard is a whole single-shard table (rows, index, sketch, clock,
    counters, and the optimizer's slots, which follow their variable) on
    one device. Under `ParameterServerStrategy` the shards' row variables
    are created one after another, so its round-robin placement puts them
    on different parameter servers, and each shard's other state is
    colocated with its rows.
    """
    n = self.num_shards
    config = self.get_config()
    for key in ("name", "capacity", "admission_width", "admission_window",
                "num_shards", "trainable", "dtype"):
      config.pop(key, None)
    self._shards = [
        CollisionlessEmbedding(
            capacity=-(-self.capacity // n),
            admission_width=(None if self.admission_width is None else
                             max(1, -(-self.admission_width // n))),
            # Each shard counts the traffic of its own ids.
            admission_window=(self.admission_window
                              if not self.admission_window else
                              max(1, -(-self.admission_window // n))),
            num_shards=1, name=f"{self.name}_shard_{i}", dtype=self.dtype,
            trainable=self.trainable, **config)
        for i in range(n)
    ]
    for shard in self._shards:
      with tf.name_scope(shard.name):
        shard._build_rows()  # pylint: disable=protected-access
    for shard in self._shards:
      with tf.name_scope(shard.name), _colocated_with(shard.embeddings):
        shard._build_state()  # pylint: disable=protected-access
      shard.built = True
    # The layer's own clock and patch sequence (the shards keep theirs).
    self._build_clock()

  def _add_counter(self, name):
    """An int64 scalar of the layer's state, starting at 0."""
    return self.add_weight(name=name, shape=[], dtype=tf.int64,
                           initializer="zeros", trainable=False)

  def _build_clock(self):
    self.clock = self._add_counter("clock")
    self.patch_sequence = self._add_counter("patch_sequence")

  @property
  def shards(self) -> List["CollisionlessEmbedding"]:
    """The shards of a sharded table (`num_shards > 1`), else `[]`."""
    self.build(None)
    return list(self._shards)

  def _shard_of(self, keys):
    """The shard (int32) of each int64 key: a hash independent of the
    cuckoo index's own, so every shard's index sees uniform keys."""
    return tf.cast(hashing.reduce_range(
        hashing.mix64(keys, _SHARD_SEED), self.num_shards), tf.int32)

  def _partition(self, keys):
    """`keys` split by shard, and the positions that stitch per-shard
    results back into key order."""
    shard = self._shard_of(keys)
    n = self.num_shards
    return (tf.dynamic_partition(tf.range(tf.size(keys)), shard, n),
            tf.dynamic_partition(keys, shard, n))

  def _sharded_embed(self, keys, training):
    positions, parts = self._partition(keys)
    vectors = []
    for shard, shard_keys in zip(self._shards, parts):
      with _on_device_of(shard.embeddings):
        vectors.append(shard._embed_flat(shard_keys, training))  # pylint: disable=protected-access
    return tf.dynamic_stitch(positions, vectors)

  @property
  def table(self):
    """The `tm.CuckooHashTable` indexing this layer's rows; for a sharded
    layer, a `ShardedTableView` summing its shards' tables."""
    self.build(None)
    if self._shards:
      return ShardedTableView(
          [shard._table for shard in self._shards])  # pylint: disable=protected-access
    return self._table

  @property
  def sketch(self) -> Optional[admission.CountMinSketch]:
    """The admission `tm.CountMinSketch` (None when `min_count == 1`, and
    for a sharded layer, whose shards each have theirs)."""
    self.build(None)
    return self._sketch

  def admission_counts(self):
    """`(ids, misses)`: ids looked up in training so far, and how many of
    them had no row (not yet admitted, or no room), as Python ints."""
    self.build(None)
    if self._shards:
      counts = [shard.admission_counts() for shard in self._shards]
      return sum(c[0] for c in counts), sum(c[1] for c in counts)
    return (int(self.training_ids.numpy()),
            int(self.training_misses.numpy()))

  def admission_halvings(self) -> int:
    """How many times the admission counts have halved so far (once per
    `admission_window` sightings of ids without a row), summed over the
    shards; 0 without a sketch (`min_count == 1`) or when counts never age.

    Halvings that come about as often as ids reach `min_count` mean the
    window is too short for the traffic: a larger one gives rare ids longer.
    """
    self.build(None)
    if self._shards:
      return sum(shard.admission_halvings() for shard in self._shards)
    if self._sketch is None:
      return 0
    return int(self._sketch.halvings.numpy())

  def live_keys(self) -> tf.Tensor:
    """The keys that have a row (int64, in no particular order)."""
    self.build(None)
    if self._shards:
      return tf.concat([shard.live_keys() for shard in self._shards], 0)
    return tf.gather(self._table.row_keys, self._table.live_rows())

  def read_rows(self, keys):
    """`(values, present)` for 1-D int64 `keys`: their rows' values (zeros
    where a key has no row) and whether each has one. Never inserts."""
    self.build(None)
    if self._shards:
      positions, parts = self._partition(keys)
      read = [shard.read_rows(k) for shard, k in zip(self._shards, parts)]
      return (tf.dynamic_stitch(positions, [r[0] for r in read]),
              tf.dynamic_stitch(positions, [r[1] for r in read]))
    rows = self._table.lookup_flat(keys)
    present = rows >= 0
    values = tf.gather(self.embeddings, tf.where(present, rows,
                                                 self.capacity))
    return values * tf.cast(present, values.dtype)[:, tf.newaxis], present

  def bind_optimizer(self, optimizer):
    """Lets the layer reset `optimizer`'s state of rows it reuses.

    `tfrs_monolith.Model` does this itself. Other models call it once after
    `compile`. Works with every `tf.keras.optimizers` optimizer whose state
    is per row (Adagrad, Adam, SGD with momentum, Ftrl, RMSprop, ...).
    """
    self._optimizer_ref = (None if optimizer is None else
                           weakref.ref(optimizer))
    for shard in self._shards:
      shard.bind_optimizer(optimizer)

  def _optimizer_rows(self) -> List[tf.Variable]:
    """Optimizer variables holding per-row state of `embeddings`."""
    optimizer = self._optimizer_ref() if self._optimizer_ref else None
    if optimizer is None:
      return []
    suffix = "/" + self.embeddings.name
    shape = self.embeddings.shape
    found = []
    variables = optimizer.variables
    if callable(variables):  # legacy optimizers: a method
      variables = variables()
    for var in variables:
      if var.shape == shape and var.name.endswith(suffix):
        found.append(var)
    if hasattr(optimizer, "get_slot_names"):  # legacy optimizers
      for slot in optimizer.get_slot_names():
        try:
          found.append(optimizer.get_slot(self.embeddings, slot))
        except KeyError:
          pass
    return list({id(var): var for var in found}.values())

  # --------------------------------------------------------------------- time

  def advance_clock(self, now_seconds):
    """Moves the event-time clock forward to `now_seconds` (never back)."""
    self.build(None)
    now = self._as_time("now_seconds", now_seconds)
    for shard in self._shards:
      shard.advance_clock(now)
    self.clock.assign(tf.maximum(self.clock, now))
    return self.clock.read_value()

  def _as_time(self, name, value):
    if tf.is_tensor(value):
      if not (value.dtype.is_integer or value.dtype.is_floating):
        raise TypeError(f"`{name}` must be a number of seconds. Received: "
                        f"{name} with dtype {value.dtype.name}")
      return tf.cast(value, tf.int64)
    if isinstance(value, bool) or not isinstance(
        value, (numbers.Real, np.number)) or not math.isfinite(value):
      raise TypeError(f"`{name}` must be a number of seconds. Received: "
                      f"{name}={value!r}")
    return tf.constant(int(value), tf.int64)

  def _now(self, wall=None):
    """The clock, or wall time while no event time was ever given.

    Training never moves the clock: only `advance_clock` does, so a model
    trained without event time keeps stamping ids with wall time.
    """
    if wall is None:
      wall = tf.cast(tf.timestamp(), tf.int64)
    return tf.where(self.clock > 0, self.clock, wall)

  # --------------------------------------------------------------------- call

  def _initial_values(self, keys):
    """Initial rows for int64 `keys` ([n]) from a hash of (seed, key)."""
    kind, a, b, _ = self._init_spec
    n = tf.shape(keys)[0]
    if kind == "constant":
      return tf.fill([n, self.output_dim], tf.constant(a, self.dtype))
    base = hashing.mix64(keys, _INIT_SEED ^ self.seed)
    h = hashing.mix64(base[:, None] + tf.range(self.output_dim,
                                               dtype=tf.int64)[None, :])
    # 53 random bits -> uniform in (0, 1).
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(h, 11),
                                  (1 << 53) - 1)
    u = (tf.cast(bits, tf.float64) + 0.5) * (2.0**-53)
    if kind == "uniform":
      values = a + u * (b - a)
    elif kind == "normal":
      values = a + b * tf.math.ndtri(u)
    else:
      values = a + b * tf.math.ndtri(_PHI_MINUS_2 + u *
                                     (_PHI_PLUS_2 - _PHI_MINUS_2))
    return tf.cast(values, self.dtype)

  def _reset_rows(self, keys, rows):
    """Re-initialises `rows` (given to `keys`) and their optimizer state."""
    rows64 = tf.cast(rows, tf.int64)[:, None]
    table_lib.scatter(self.embeddings, rows64, self._initial_values(keys))
    for var in self._optimizer_rows():
      fresh = tf.gather(var, [self.capacity])          # the template row
      table_lib.scatter(var, rows64, tf.tile(fresh, [tf.size(rows), 1]))
    return tf.size(rows)

  def _admit(self, keys):
    """Admits, inserts and touches 1-D int64 `keys` (training only).

    Returns:
      `(rows, index)`: the rows of the distinct keys (-1 where not admitted)
      and, for each key, the position of its distinct key.
    """
    now = self._now()
    unique_keys, index, counts = tf.unique_with_counts(keys)
    counts = tf.cast(counts, tf.int64)
    if self._sketch is None:  # Every key is admitted.
      rows, is_new = self._table.upsert_unique(unique_keys, now, counts)
      self._reset_new_rows(unique_keys, rows, is_new)
      return rows, index
    rows = self._table.lookup_flat(unique_keys)
    absent = rows < 0
    estimates = self._sketch.add(tf.boolean_mask(unique_keys, absent),
                                 tf.boolean_mask(counts, absent))
    admitted = tf.tensor_scatter_nd_update(
        tf.logical_not(absent), tf.where(absent),
        estimates >= self.min_count)
    candidates = tf.boolean_mask(unique_keys, admitted)
    rows, is_new = self._table.upsert_unique(
        candidates, now, tf.boolean_mask(counts, admitted))
    self._reset_new_rows(candidates, rows, is_new)
    rows = tf.tensor_scatter_nd_update(
        tf.fill(tf.shape(unique_keys), -1), tf.where(admitted), rows)
    return rows, index

  def _reset_new_rows(self, keys, rows, is_new):
    new_keys = tf.boolean_mask(keys, is_new)
    tf.cond(tf.size(new_keys) > 0,
            lambda: self._reset_rows(new_keys, tf.boolean_mask(rows, is_new)),
            lambda: tf.constant(0))

  def _admit_all(self, keys):
    """Admits, inserts and touches 1-D int64 `keys`; rows per key (int32)."""
    rows, index = self._admit(keys)
    rows = tf.gather(rows, index)
    self.training_misses.assign_add(
        tf.math.count_nonzero(rows < 0, dtype=tf.int64))
    return rows

  def _probe_touch(self, keys, n, wall):
    """The steady-state table work of a training call, as one block.

    Looks the first `n` of `keys` up (the rest is padding) and, if each has
    a row, marks those rows seen (`table.lookup_touch`); counts the ids
    looked up. Compiled with XLA when `jit_compile`.

    Returns:
      `(rows, present)`: int32 rows, the sink row where a key has none, and
      whether every key had one (and was touched).
    """
    counts = tf.cast(tf.range(tf.size(keys)) < n, tf.int64)
    rows, present = self._table.lookup_touch(keys, self._now(wall), counts)
    self.training_ids.assign_add(tf.cast(n, tf.int64))
    return self._or_sink(rows), present

  def _or_sink(self, rows):
    """`rows` with the sink row (`capacity + 1`) where a key has none."""
    return tf.where(rows >= 0, rows, self.capacity + 1)

  def _admit_rows(self, keys):
    """Rows of 1-D int64 `keys` after admission and insertion; the sink row
    where a key has none (not admitted, or no room)."""
    n = tf.size(keys)
    wall = tf.cast(tf.timestamp(), tf.int64)
    if not self.jit_compile:
      rows, present = self._probe_touch(keys, n, wall)
    else:
      rows, present = _padded_call(self._xla_probe_touch, (keys,), n, wall)
    # Steady state: every key had a row and is now marked seen. Otherwise
    # the keys go through admission and insertion.
    return _cond_as_call(present, lambda: tf.identity(rows),
                         lambda: self._admit_slow(keys))

  def _admit_slow(self, keys):
    """Admits and inserts `keys`; their rows, the sink where a key has none.

    Ids without a row read the sink row, zeroed here first. Its gradient
    lands on the sink, which nothing else reads; a step whose ids all have
    rows (the steady state) reads no sink and leaves it as it is. Workers
    of a strategy train concurrently (one may update the sink between
    another's zeroing and reading it): `_learn` masks the sink instead.
    """
    rows = self._or_sink(self._admit_locked(keys))
    if tf.distribute.has_strategy():
      return rows
    with tf.control_dependencies([self.embeddings.scatter_update(
        tf.IndexedSlices(tf.zeros([1, self.output_dim], self.embeddings.dtype),
                         tf.constant([self.capacity + 1])))]):
      return tf.identity(rows)

  def _admit_locked(self, keys):
    """`_admit_all`, alone on the table when workers share it."""
    if self._insert_lock is None or not _xla_allowed():
      return self._admit_all(keys)
    return self._insert_lock.execute(lambda: self._admit_all(keys),
                                     exclusive_resource_access=False)

  @tf.function(reduce_retracing=True, autograph=False)
  def _admit_graph(self, keys, num_optimizer_rows):
    # `num_optimizer_rows` retraces once the optimizer has created its state.
    del num_optimizer_rows
    return self._admit_rows(keys)

  def _learn(self, keys):
    """Training lookup of 1-D int64 `keys`: admit, insert, touch, read.

    Once every id of a batch has a row (the steady state), this is one probe,
    the last-seen/dirty scatters and a gather: the gradient is an
    `IndexedSlices` over the batch's rows, as for `tf.keras.layers.Embedding`.
    """
    if tf.executing_eagerly():   # Run the table updates as one graph.
      rows = self._admit_graph(keys, len(self._optimizer_rows()))
    else:
      rows = self._admit_rows(keys)
    sink = self.capacity + 1
    if tf.distribute.has_strategy():
      # Mask the sink's vectors: it then gets only zero gradients.
      vectors = tf.gather(self.embeddings, rows)
      return vectors * tf.cast(rows != sink, vectors.dtype)[:, tf.newaxis]
    # The sink, if read, was zeroed by `_admit_slow` (automatic control
    # dependencies order the ops on the variable).
    return tf.gather(self.embeddings, rows)

  def _read_index(self, keys, compiled=False):
    """The rows inference reads for 1-D int64 `keys`: the template row
    (never trained: zeros) where a key has none. `compiled`: under XLA."""
    rows = self._table.lookup_flat(keys, compiled=compiled)
    return tf.where(rows >= 0, rows, self.capacity)

  def _lookup(self, keys):
    """Inference: vectors of 1-D int64 `keys`, never inserting.

    With `jit_compile`, the probe runs under XLA, except while a serving
    graph is traced (`serving_graph`, SavedModel export).
    """
    if not (self.jit_compile and _xla_allowed()) or (
        # An XLA block cannot be called eagerly on another task.
        tf.executing_eagerly() and _is_remote(self.embeddings)):
      return tf.gather(self.embeddings, self._read_index(keys))
    return tf.gather(self.embeddings,
                     _padded_call(self._xla_read_index, (keys,)))

  def _embed(self, keys, training):
    flat = keys if keys.shape.rank == 1 else tf.reshape(keys, [-1])
    if self._shards:
      vectors = self._sharded_embed(flat, training)
    else:
      with _on_device_of(self.embeddings):
        vectors = self._embed_flat(flat, training)
    if keys.shape.rank == 1:
      return vectors
    return tf.reshape(vectors,
                      tf.concat([tf.shape(keys), [self.output_dim]], 0))

  def _embed_flat(self, flat, training):
    if training is None or training is False:
      vectors = self._lookup(flat)
    elif training is True:
      vectors = self._learn(flat)
    else:
      vectors = tf.cond(
          tf.cast(training, tf.bool), lambda: self._learn(flat),
          lambda: self._lookup(flat))
    return vectors

  def call(self, inputs, training=None):
    """Looks up the embeddings of `inputs`.

    Args:
      inputs: int or string ids, any shape, dense or `tf.RaggedTensor`.
      training: If true, admit, insert and touch ids (Keras passes this in
        `fit`); if false, only read. None learns only inside
        `tfrs_monolith.embedding.learning()` (entered by
        `tfrs_monolith.Model.train_step`).

    Returns:
      A float tensor of shape `inputs.shape + [output_dim]`.
    """
    if training is None and _LEARNING.get():
      training = True
    if isinstance(inputs, tf.SparseTensor):
      raise TypeError("`inputs` must be a dense or ragged tensor of ids; "
                      "densify or use a RaggedTensor. Received: a "
                      "tf.SparseTensor")
    keys = hashing.to_keys(inputs, "inputs")
    if isinstance(keys, tf.RaggedTensor):
      return keys.with_flat_values(self._embed(keys.flat_values, training))
    return self._embed(keys, training)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape).concatenate([self.output_dim])

  # ------------------------------------------------------------------- expiry

  def expire(self, now_seconds=None) -> tf.Tensor:
    """Evicts ids idle for longer than `ttl_seconds`; returns their keys.

    Args:
      now_seconds: event time; advances the clock. Defaults to the clock
        (or wall time if no event time was given yet).

    Returns:
      int64 tensor of the evicted keys (empty when `ttl_seconds` is None).
    """
    self.build(None)
    if now_seconds is not None:
      self.advance_clock(now_seconds)
    if self.ttl_seconds is None:
      return tf.zeros([0], tf.int64)
    if self._shards:
      return tf.concat([shard.expire() for shard in self._shards], 0)
    cutoff = self._now() - int(math.ceil(self.ttl_seconds))
    return self._table.expire(cutoff)

  # ------------------------------------------------------------------ patches

  @tf.function(autograph=False)
  def _take_patch(self):
    return self._take_changes()

  def _live_items(self):
    """Keys and values of every live row (a single-shard layer)."""
    rows = self._table.live_rows()
    return (tf.gather(self._table.row_keys, rows),
            tf.gather(self.embeddings, rows))

  def _take_changes(self):
    """`(keys, values, removed, full)` changed since the last call.

    A sharded layer merges its shards' changes into one patch: if any shard
    must send a full snapshot, every shard sends all its live rows.
    """
    if not self._shards:
      with _on_device_of(self.embeddings):
        rows, keys, removed, full = self._table.take_changes()
        return keys, tf.gather(self.embeddings, rows), removed, full
    taken = [shard._take_changes() for shard in self._shards]  # pylint: disable=protected-access
    full = tf.reduce_any(tf.stack([t[3] for t in taken]))
    keys, values = [], []
    for shard, (k, v, _, shard_full) in zip(self._shards, taken):
      with _on_device_of(shard.embeddings):
        k, v = tf.cond(tf.logical_and(full, tf.logical_not(shard_full)),
                       shard._live_items,  # pylint: disable=protected-access
                       lambda k=k, v=v: (k, v))
      keys.append(k)
      values.append(v)
    removed = tf.concat([t[2] for t in taken], 0)
    removed = tf.cond(full, lambda: removed[:0], lambda: removed)
    return tf.concat(keys, 0), tf.concat(values, 0), removed, full

  def export_patch(self, model_name: str = "", watermark=None):
    """Returns the rows touched since the last call and the evicted keys.

    Each call consumes the changes it returns and takes the next sequence
    number of this table.

    Args:
      model_name: recorded in the patch.
      watermark: input positions the table state reflects, recorded in the
        patch (e.g. `{"examples/0": offset}`).

    Returns:
      A `tm.EmbeddingPatch`.
    """
    self.build(None)
    keys, values, removed, full = self._take_patch()
    sequence = int(self.patch_sequence.assign_add(1).numpy())
    return patch_lib.EmbeddingPatch(
        keys=keys.numpy(), values=values.numpy(), evicted=removed.numpy(),
        model_name=model_name, table_name=self.name, sequence=sequence,
        created_at=int(self._now().numpy()), watermark=watermark or {},
        full=bool(full.numpy()))

  def apply_patch_tensors(self, keys, values, evicted, full=False,
                          created_at=None):
    """Graph form of `apply_patch` (used by the exported `apply_patch`
    serving signature); returns how many rows changed (int64 scalar)."""
    self.build(None)
    keys = tf.reshape(tf.cast(keys, tf.int64), [-1])
    evicted = tf.reshape(tf.cast(evicted, tf.int64), [-1])
    values = tf.cast(tf.reshape(values, [-1, self.output_dim]), self.dtype)
    now = self._now() if created_at is None else tf.cast(created_at,
                                                         tf.int64)
    now = tf.where(now > 0, now, self._now())
    if self._shards:
      # Each key belongs to one shard, so a shard's unlisted keys (in a full
      # patch) are those missing from its part.
      key_shards = self._shard_of(keys)
      n = self.num_shards
      parts = zip(self._shards, tf.dynamic_partition(keys, key_shards, n),
                  tf.dynamic_partition(values, key_shards, n),
                  tf.dynamic_partition(evicted, self._shard_of(evicted), n))
      changed = []
      for shard, shard_keys, shard_values, shard_evicted in parts:
        with _on_device_of(shard.embeddings):
          changed.append(shard.apply_patch_tensors(
              shard_keys, shard_values, shard_evicted, full, now))
      return tf.add_n(changed)

    def drop_unlisted():
      live_keys = tf.gather(self._table.row_keys, self._table.live_rows())
      kept = table_lib.isin(live_keys, keys)
      return self._table.remove_flat(
          tf.boolean_mask(live_keys, tf.logical_not(kept)))

    removed = tf.cond(tf.cast(full, tf.bool), drop_unlisted,
                      lambda: tf.zeros([0], tf.bool))
    with tf.control_dependencies([removed]):
      dropped = self._table.remove_flat(evicted)
    with tf.control_dependencies([dropped]):
      rows, _ = self._table.upsert_unique(keys, now, tf.zeros_like(keys))
    ok = rows >= 0
    table_lib.scatter(self.embeddings, tf.boolean_mask(rows, ok),
                      tf.boolean_mask(values, ok))
    return (tf.reduce_sum(tf.cast(ok, tf.int64)) +
            tf.reduce_sum(tf.cast(dropped, tf.int64)) +
            tf.reduce_sum(tf.cast(removed, tf.int64)))

  def apply_patch(self, patch: patch_lib.EmbeddingPatch) -> int:
    """Upserts `patch.keys` with `patch.values` after removing its evicted
    keys. Idempotent. Returns the number of rows changed.

    Raises:
      TypeError: if `patch` is not a `tm.EmbeddingPatch`.
      ValueError: if its dimension differs from `output_dim`.
    """
    if not isinstance(patch, patch_lib.EmbeddingPatch):
      raise TypeError("`patch` must be a tm.EmbeddingPatch. Received: "
                      f"patch of type {type(patch).__name__}")
    if len(patch) and patch.dim != self.output_dim:
      raise ValueError(f"`patch` has dim {patch.dim} but this layer has "
                       f"output_dim={self.output_dim}")
    values = patch.values if len(patch) else np.zeros(
        [0, self.output_dim], np.float32)
    if patch.created_at:
      self.advance_clock(patch.created_at)
    changed = self._apply_patch_graph(
        tf.constant(patch.keys, tf.int64), tf.constant(values, tf.float32),
        tf.constant(patch.evicted, tf.int64), tf.constant(patch.full),
        tf.constant(patch.created_at, tf.int64))
    return int(changed.numpy())

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, None], tf.float32),
      tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.bool),
      tf.TensorSpec([], tf.int64)], autograph=False)
  def _apply_patch_graph(self, keys, values, evicted, full, created_at):
    return self.apply_patch_tensors(keys, values, evicted, full, created_at)

  # ------------------------------------------------------------------- config

  def get_config(self):
    config = {
        "output_dim": self.output_dim,
        "capacity": self.capacity,
        "min_count": self.min_count,
        "ttl_seconds": self.ttl_seconds,
        "embeddings_initializer":
            tf.keras.initializers.serialize(self.embeddings_initializer),
        "full_policy": self.full_policy,
        "slots_per_bucket": self.slots_per_bucket,
        "admission_width": self.admission_width,
        "admission_depth": self.admission_depth,
        "admission_window": self.admission_window,
        "seed": self.seed,
        "jit_compile": self.jit_compile,
        "num_shards": self.num_shards,
    }
    base_config = super().get_config()
    return {**base_config, **config}
