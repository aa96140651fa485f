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
"""Implements `CuckooHashTable`: a collisionless key -> row index, stock ops."""

import math
from typing import Optional

import tensorflow as tf

from tfrs_monolith import hashing

__all__ = ["CuckooHashTable", "FULL_POLICIES"]

FULL_POLICIES = ("evict_lru", "error")

_BUCKET_SEED = 0x5EED_C0C0_0B0E_0001
_MAX_CAPACITY = 2**31 - 2
# Default index headroom: the index holds capacity / _TARGET_LOAD slots, so a
# table whose rows are all taken fills its index to 90 %, below the ~97 %
# (4-slot buckets) or ~99.4 % (8-slot) at which placements start to fail.
_TARGET_LOAD = 0.9


def scatter(var: tf.Variable, indices: tf.Tensor, values: tf.Tensor,
            op: str = "update"):
  """`var[indices] (op)= values` for indices of shape [n] or [n, 1].

  Goes through `IndexedSlices` (ResourceScatterUpdate and friends), which is
  several times faster than `scatter_nd_*` on 1-D variables.
  """
  slices = tf.IndexedSlices(values, tf.reshape(indices, [-1]))
  return {"update": var.scatter_update, "max": var.scatter_max,
          "add": var.scatter_add}[op](slices)


def isin(values: tf.Tensor, pool: tf.Tensor) -> tf.Tensor:
  """Elementwise `values in pool` for 1-D tensors (O((n + m) log m))."""
  ordered = tf.sort(pool)
  size = tf.size(ordered, out_type=tf.int64)
  at = tf.minimum(tf.searchsorted(ordered, values, out_type=tf.int64),
                  tf.maximum(size - 1, 0))
  padded = tf.concat([ordered, tf.zeros([1], ordered.dtype)], 0)
  return tf.logical_and(size > 0, tf.equal(tf.gather(padded, at), values))


def _by_count(keys, counts):
  """`keys` and `counts`, most frequent first (stable)."""
  order = tf.argsort(counts, direction="DESCENDING", stable=True)
  return tf.gather(keys, order), tf.gather(counts, order)


def _check_positive_int(name, value, upper=None):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(
        f"`{name}` must be a positive integer. Received: {name}={value!r}")
  if upper is not None and value > upper:
    raise ValueError(
        f"`{name}` must be at most {upper}. Received: {name}={value!r}")


class CuckooHashTable(tf.Module):
  """A bucketized cuckoo hash index from int64 keys to stable row ids.

  Every key gets its own row: there are no collisions, unlike the hashing
  trick (`id % buckets`). Keys live in `num_buckets` buckets of
  `slots_per_bucket` slots; each key may sit in one of two distinct buckets
  chosen by two hash functions, so a lookup is two bucket gathers and a
  compare, O(1) in the worst case, and compiles with XLA.

  The index maps key -> row id. Rows never move when cuckoo displaces a key:
  they come from a free list and return to it when their key is removed or
  expires. Per row the table keeps its key (reverse map), last-seen time,
  occurrence count and a dirty flag (touched since the last `take_changes`),
  and it records removed keys so that a patch can list them.

  Inserts run in parallel rounds inside one `tf.while_loop`: pending keys are
  ranked per target bucket and fill empty slots; a key whose two buckets are
  both full displaces a victim, preferring one whose other bucket has room,
  and the victim moves on to its other bucket. If keys are still pending
  after `max_rounds` rounds, displaced keys are put back first and what is
  left of the new keys is handled by `full_policy`; a live key's row is
  never overwritten.

  All state is in `tf.Variable`s, so the table checkpoints with
  `tf.train.Checkpoint`, saves in a SavedModel, and loads in a stock
  `tensorflow_model_server` (no custom ops).

  Example:

  ```python
  table = tm.CuckooHashTable(capacity=1000)
  table.insert([7, 42])          # -> [0, 1]
  table.lookup([42, 5])          # -> [1, -1]
  table.remove([7])
  table.size()                   # -> 1
  ```

  Args:
    capacity: Number of rows, i.e. the most keys the table can hold.
    slots_per_bucket: Slots per bucket (4 or 8 are typical). A tight index
      of 8-slot buckets fills to about 99.5 % before a placement fails, of
      4-slot buckets to about 97 %.
    num_buckets: Buckets of the index. Defaults to enough buckets for the
      index to be 90 % full when every row is taken.
    full_policy: What an insert does when the table has no free row, or (only
      with an index sized tighter than the default) cannot place a key in
      its two full buckets. `"evict_lru"`: evict the least recently seen keys
      of the table (no free row) or of those two buckets (no free slot), and
      report them as removed. Keys seen at the insert's event time (the
      call's own keys among them) are never evicted to make room: new keys
      beyond the rows that frees are refused, the most frequent in the call
      placed first, and counted in `rejected`. So a flood of new ids can
      push out only ids idle for longer than the ids in use. `"error"`: raise `InvalidArgumentError`,
      inserting none of the call's keys.
    max_rounds: Bound on the parallel cuckoo rounds of one insert.
    name: Module name.
  """

  def __init__(self,
               capacity: int,
               slots_per_bucket: int = 4,
               num_buckets: Optional[int] = None,
               full_policy: str = "evict_lru",
               max_rounds: int = 256,
               name: Optional[str] = None):
    super().__init__(name=name)
    _check_positive_int("capacity", capacity, _MAX_CAPACITY)
    _check_positive_int("slots_per_bucket", slots_per_bucket, 64)
    if num_buckets is None:
      num_buckets = max(
          2, math.ceil(capacity / (slots_per_bucket * _TARGET_LOAD)))
    _check_positive_int("num_buckets", num_buckets, _MAX_CAPACITY)
    if num_buckets < 2:
      raise ValueError("`num_buckets` must be at least 2 so that the two hash "
                       f"functions give distinct buckets. Received: "
                       f"num_buckets={num_buckets}")
    if num_buckets * slots_per_bucket > _MAX_CAPACITY:
      raise ValueError(
          "`num_buckets * slots_per_bucket` must be below 2**31. Received: "
          f"num_buckets={num_buckets}, slots_per_bucket={slots_per_bucket}")
    if full_policy not in FULL_POLICIES:
      raise ValueError(f"`full_policy` must be one of {FULL_POLICIES}. "
                       f"Received: full_policy={full_policy!r}")
    _check_positive_int("max_rounds", max_rounds)
    self._capacity = capacity
    self._slots = slots_per_bucket
    self._num_buckets = num_buckets
    self._full_policy = full_policy
    self._max_rounds = max_rounds

    with tf.init_scope():
      self._empty_keys = self._find_empty_keys()
      # One bucket per row: its slots' keys, then their rows (-1: empty).
      # A probe reads a bucket as one contiguous slice (64 bytes with 4
      # slots: one cache line) instead of 2 * slots scattered scalars.
      # Empty slots hold their bucket's empty key (`_empty_key_of`).
      empty = tf.range(num_buckets, dtype=tf.int64)
      self.buckets = tf.Variable(
          tf.concat([
              tf.tile(self._empty_key_of(empty)[:, None],
                      [1, slots_per_bucket]),
              tf.fill([num_buckets, slots_per_bucket],
                      tf.constant(-1, tf.int64))
          ], 1), trainable=False, name="buckets")
      # Scratch space of inserts: one claim per bucket and round.
      self.claims = tf.Variable(
          tf.zeros([num_buckets], tf.int32), trainable=False, name="claims")
      self.row_keys = tf.Variable(
          tf.zeros([capacity], tf.int64), trainable=False, name="row_keys")
      self.row_live = tf.Variable(
          tf.zeros([capacity], tf.int32), trainable=False, name="row_live")
      self.row_last_seen = tf.Variable(
          tf.zeros([capacity], tf.int64), trainable=False,
          name="row_last_seen")
      self.row_count = tf.Variable(
          tf.zeros([capacity], tf.int64), trainable=False, name="row_count")
      self.row_dirty = tf.Variable(
          tf.zeros([capacity], tf.int32), trainable=False, name="row_dirty")
      # Free rows form a stack; free_stack[:num_free] are free, top last.
      self.free_stack = tf.Variable(
          tf.range(capacity - 1, -1, -1, dtype=tf.int32), trainable=False,
          name="free_stack")
      self.num_free = tf.Variable(
          tf.constant(capacity, tf.int64), trainable=False, name="num_free")
      # Keys removed since the last `take_changes`; on overflow the next
      # change set is a full snapshot instead.
      self.removed_keys = tf.Variable(
          tf.zeros([capacity], tf.int64), trainable=False,
          name="removed_keys")
      self.num_removed = tf.Variable(
          tf.constant(0, tf.int64), trainable=False, name="num_removed")
      self.removed_overflow = tf.Variable(
          tf.constant(0, tf.int64), trainable=False, name="removed_overflow")
      # Keys that could not be given a row (full table), cumulative.
      self.rejected = tf.Variable(
          tf.constant(0, tf.int64), trainable=False, name="rejected")

  # ---------------------------------------------------------------- properties

  @property
  def capacity(self) -> int:
    """Number of rows: the most keys the table can hold."""
    return self._capacity

  @property
  def slots_per_bucket(self) -> int:
    return self._slots

  @property
  def num_buckets(self) -> int:
    return self._num_buckets

  @property
  def full_policy(self) -> str:
    return self._full_policy

  def size(self) -> tf.Tensor:
    """Number of live keys (int64 scalar)."""
    return tf.constant(self._capacity, tf.int64) - self.num_free

  def load_factor(self) -> tf.Tensor:
    """Live keys / capacity (float64 scalar)."""
    return tf.cast(self.size(), tf.float64) / self._capacity

  def index_load_factor(self) -> tf.Tensor:
    """Occupied index slots / index slots (float64 scalar)."""
    return tf.cast(self.size(), tf.float64) / (
        self._num_buckets * self._slots)

  # ------------------------------------------------------------------- hashing

  def _buckets(self, keys):
    h = hashing.mix64(keys, _BUCKET_SEED)
    b1 = hashing.reduce_range(h, self._num_buckets)
    offset = hashing.reduce_range(h, self._num_buckets - 1, high=True)
    b2 = b1 + 1 + offset
    b2 = tf.where(b2 >= self._num_buckets, b2 - self._num_buckets, b2)
    return b1, b2

  def _find_empty_keys(self):
    """Two keys whose bucket pairs are disjoint, or None (under 4 buckets).

    An empty slot holds the first key, or the second in the first key's own
    buckets: a probe of any key then never finds the key of an empty slot
    among its candidates (a key probing bucket b differs from a key that
    never maps to b). So a probe needs no check of the row to tell a free
    slot from the key's own (`lookup_flat` with `compiled`).
    """
    if self._num_buckets < 4:
      return None
    candidates = tf.range(1, 65, dtype=tf.int64)
    b1, b2 = (b.numpy().tolist() for b in self._buckets(candidates))
    pairs = [{x, y} for x, y in zip(b1, b2)]
    for i, pair in enumerate(pairs[1:], 1):
      if not pair & pairs[0]:
        return (1, i + 1), (b1[0], b2[0])
    return None  # pragma: no cover (64 random pairs of >= 4 buckets)

  def _empty_key_of(self, buckets):
    """The key an empty slot of each bucket (int64 tensor) holds."""
    if self._empty_keys is None:
      return tf.zeros_like(buckets)
    (first, second), (c1, c2) = self._empty_keys
    return tf.where(tf.logical_or(tf.equal(buckets, c1), tf.equal(buckets, c2)),
                    tf.constant(second, tf.int64), tf.constant(first, tf.int64))

  def rewrite_empty_slots(self) -> tf.Tensor:
    """Gives every empty slot of the index its bucket's empty key.

    An index written by this version needs nothing. One restored from a
    checkpoint written before empty slots held empty keys (see the
    changelog) may keep removed keys in empty slots, and the XLA probe
    (`lookup_flat` with `compiled`) misses a key if it matches such a copy
    instead of the key's own slot: XLA inference then reads the default
    vector (training and serving graphs probe every row and find the key). `tm.OnlineTrainer` calls this after
    every restore; call it after restoring such a checkpoint yourself.

    Returns:
      The number of slots rewritten (int64 scalar).
    """
    contents = self.buckets.read_value()
    s = self._slots
    buckets = tf.range(self._num_buckets, dtype=tf.int64)
    stale = tf.logical_and(
        contents[:, s:] < 0,
        tf.not_equal(contents[:, :s], self._empty_key_of(buckets)[:, None]))
    with tf.control_dependencies([self._write_buckets(buckets, contents)]):
      return tf.math.count_nonzero(stale)

  # -------------------------------------------------------------------- lookup

  def _write_buckets(self, buckets, contents, fills_only=False):
    """Overwrites whole buckets (int64 ids, each at most once) with
    `contents` ([k, 2 * slots]); returns the op.

    Slots with no row get their bucket's empty key, whatever key they had
    (a removed or displaced key does not linger). With `fills_only`, the
    caller only put keys into slots (empty ones, or a displaced key's), so
    no slot emptied and the contents are written as they are.
    """
    if not fills_only:
      s = self._slots
      contents = tf.concat([
          tf.where(contents[:, s:] < 0,
                   self._empty_key_of(tf.cast(buckets, tf.int64))[:, None],
                   contents[:, :s]),
          contents[:, s:]
      ], 1)
    return tf.raw_ops.ResourceScatterUpdate(
        resource=self.buckets.handle, indices=buckets, updates=contents)

  def _with_slot(self, contents, slot, key, row):
    """`contents` ([k, 2 * slots]) with slot `slot` ([k]) set to (key, row)."""
    s = self._slots
    at = tf.equal(tf.range(s, dtype=tf.int64)[None, :],
                  tf.cast(slot, tf.int64)[:, None])
    return tf.concat([
        tf.where(at, key[:, None], contents[:, :s]),
        tf.where(at, tf.cast(row, tf.int64)[:, None], contents[:, s:])
    ], 1)

  def _match(self, keys):
    """Both candidate buckets of each key: their rows and a key match mask.

    A removed key may linger in a bucket, but its slot's row is -1.
    """
    b1, b2 = self._buckets(keys)
    contents = tf.gather(self.buckets, tf.stack([b1, b2], axis=1))
    slot_keys, slot_rows = tf.split(contents, 2, axis=2)    # [n, 2, s] each
    return b1, b2, slot_rows, tf.equal(slot_keys, keys[:, None, None])

  def _probe(self, keys):
    """Rows of int64 `keys` ([n]) and the buckets holding them (-1: absent)."""
    b1, b2, slot_rows, match = self._match(keys)
    match = tf.logical_and(match, slot_rows >= 0)
    rows = tf.reduce_max(tf.where(match, slot_rows, -1), axis=[1, 2])
    in_first = tf.reduce_any(match[:, 0], axis=1)
    buckets = tf.where(rows >= 0, tf.where(in_first, b1, b2), -1)
    return tf.cast(rows, tf.int32), buckets

  def _unindex(self, keys):
    """Empties the index slots of `keys`; their rows stay allocated.

    Returns:
      The rows the keys had (int32, -1 for keys that were absent).
    """
    rows, buckets = self._probe(keys)
    found = rows >= 0
    targets = tf.unique(tf.boolean_mask(buckets, found))[0]
    contents = tf.gather(self.buckets, targets)
    s = self._slots
    hit = tf.reshape(
        isin(tf.reshape(contents[:, :s], [-1]), tf.boolean_mask(keys, found)),
        [-1, s])
    self._write_buckets(targets, tf.concat(
        [contents[:, :s], tf.where(hit, tf.constant(-1, tf.int64),
                                   contents[:, s:])], 1))
    return rows

  def lookup_flat(self, keys: tf.Tensor, compiled: bool = False) -> tf.Tensor:
    """Rows of a 1-D int64 key tensor (graph building block); -1 if absent.

    Args:
      keys: 1-D int64 keys.
      compiled: formulate the probe for XLA (`jit_compile`): each key reads
        the keys of its 2 x slots slots and then the one row it matched, as
        scalar gathers that XLA fuses into one loop (a third less time
        than whole-bucket gathers for 65,536 keys). Without XLA the
        whole-bucket gathers are faster, as each op of the unrolled probe
        runs on its own. A key that matched a slot with no row reads -2,
        which only an index restored from an earlier build's checkpoint
        can cause (`rewrite_empty_slots`).
    """
    if compiled and self._empty_keys is not None:
      return self._probe_slots(keys)
    return self._probe_buckets(keys)

  def _probe_buckets(self, keys):
    """`lookup_flat` from whole buckets; ignores matches with no row."""
    _, _, slot_rows, match = self._match(keys)
    return tf.cast(tf.reduce_max(tf.where(match, slot_rows, -1), axis=[1, 2]),
                   tf.int32)

  def _probe_slots(self, keys):
    """`lookup_flat` from the slots' keys and the matched row alone.

    Returns int32 rows: -1 where absent, -2 where the matched slot has no
    row. The latter never happens in an index written by this version, as
    empty slots hold empty keys; in an index restored from a checkpoint of
    an earlier one, a removed key may linger in a slot with no row
    (`rewrite_empty_slots`).
    """
    b1, b2 = self._buckets(keys)
    flat = tf.reshape(self.buckets, [-1])
    s = self._slots
    # int32 offsets where the index allows (a few % faster under XLA).
    offset = tf.int32 if self._num_buckets * 2 * s < 2**31 else tf.int64
    at = tf.fill(tf.shape(keys), tf.constant(-1, offset))
    for bucket in (b1, b2):
      base = tf.cast(bucket, offset) * (2 * s)
      for j in range(s):
        at = tf.where(tf.equal(tf.gather(flat, base + j), keys),
                      base + s + j, at)
    row = tf.gather(flat, tf.maximum(at, 0))
    return tf.cast(tf.where(at < 0, tf.constant(-1, tf.int64),
                            tf.where(row < 0, tf.constant(-2, tf.int64), row)),
                   tf.int32)

  def lookup(self, keys) -> tf.Tensor:
    """Rows of `keys` (int64 or string, any shape); -1 where absent.

    Never changes the table.

    Args:
      keys: int or string ids: a tensor, NumPy array or Python list.

    Returns:
      int64 tensor of the shape of `keys`.
    """
    keys = hashing.to_keys(keys, "keys")
    rows = self.lookup_flat(tf.reshape(keys, [-1]))
    return tf.reshape(tf.cast(rows, tf.int64), tf.shape(keys))

  # --------------------------------------------------------------- free list

  def _pop_free(self, n):
    top = self.num_free.read_value()
    rows = tf.reverse(tf.gather(self.free_stack, tf.range(top - n, top)), [0])
    with tf.control_dependencies([rows]):
      self.num_free.assign_sub(n)
    return rows

  def _push_free(self, rows):
    n = tf.size(rows, out_type=tf.int64)
    top = self.num_free.read_value()
    scatter(self.free_stack, tf.range(top, top + n), rows)
    self.num_free.assign_add(n)
    scatter(self.row_live, tf.cast(rows, tf.int64), tf.zeros_like(rows))
    scatter(self.row_dirty, tf.cast(rows, tf.int64), tf.zeros_like(rows))

  def _record_removed(self, keys):
    n = tf.size(keys, out_type=tf.int64)
    start = self.num_removed.read_value()
    fits = start + n <= self._capacity

    def append():
      scatter(self.removed_keys, tf.range(start, start + n), keys)
      self.num_removed.assign_add(n)
      return tf.constant(0)

    def overflow():
      self.removed_overflow.assign(1)
      return tf.constant(0)

    return tf.cond(fits, append, overflow)

  # ------------------------------------------------------------------- insert

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int32),
      tf.TensorSpec([], tf.bool)], autograph=False)
  def _place(self, keys, rows, kick):
    """Places (key, row) pairs into the index; returns what is left over.

    The leftovers are pairs that could not be placed within `max_rounds`:
    some may be keys displaced from the table, not the ones passed in.
    With `kick` false, keys only take free slots and nothing is displaced.

    Each round reads both buckets of every pending key once, then gathers
    the one bucket each key targets, instead of selecting and masking
    copies of whole bucket pairs: copying bucket contents is what an insert
    into 8-slot buckets spends its time on. Keys carry their two buckets
    from round to round instead of hashing again.

    A `tf.function`, so that an insert graph holds one copy of the loop
    however often it places keys.
    """
    s = self._slots
    nb = self._num_buckets
    slot_index = tf.range(s, dtype=tf.int64)
    may_kick = kick
    max_rounds = tf.where(kick, self._max_rounds, 4 * s)

    def body(rnd, keys, rows, avoid, b1, b2):
      n = tf.size(keys)
      order = tf.range(n)
      # [2n, 2s]: key i's first bucket at 2i, its second at 2i + 1.
      pair = tf.gather(self.buckets, tf.reshape(tf.stack([b1, b2], 1), [-1]))
      free = tf.reshape(
          s - tf.reduce_sum(tf.cast(pair[:, s:] >= 0, tf.int32), axis=1),
          [-1, 2])
      stuck = tf.logical_and(free[:, 0] <= 0, free[:, 1] <= 0)

      # A key with room goes to the emptier of its buckets. A key whose two
      # buckets are both full kicks a victim out: a key that was itself
      # just displaced goes to its other bucket (a random walk, never
      # straight back); a new key picks one of its two at random.
      coin = tf.bitwise.bitwise_and(
          hashing.mix64(keys + tf.cast(rnd, tf.int64), 77), 1) == 0
      kick_first = tf.where(avoid == b1, False,
                            tf.where(avoid == b2, True, coin))
      first = tf.where(stuck, kick_first, free[:, 0] >= free[:, 1])
      bucket = tf.where(first, b1, b2)
      contents = tf.gather(pair, 2 * order + tf.cast(
          tf.logical_not(first), tf.int32))                       # [n, 2s]

      # One key per bucket per round enters or kicks, so that each changed
      # bucket is rewritten once: each claims its bucket in a scratch
      # array, and the claim that stays wins. Buckets with room and full
      # buckets are distinct, so fills and kicks claim apart.
      self.claims.scatter_update(tf.IndexedSlices(order, bucket))
      won = tf.equal(tf.gather(self.claims, bucket), order)
      fill = tf.logical_and(won, tf.logical_not(stuck))
      kick = tf.logical_and(tf.logical_and(won, stuck), may_kick)
      slot = tf.argmax(tf.cast(contents[:, s:] < 0, tf.int32), axis=1,
                       output_type=tf.int64)

      # Victims whose other bucket has room first, then a random rotation.
      at = tf.where(kick)[:, 0]
      kicked = tf.gather(bucket, at)
      kick_contents = tf.gather(contents, at)
      victim_keys = kick_contents[:, :s]                          # [k, s]
      v1, v2 = self._buckets(victim_keys)
      other = v1 + v2 - kicked[:, None]
      other_free = s - tf.reduce_sum(
          tf.cast(tf.gather(self.buckets, other)[:, :, s:] >= 0, tf.int32),
          axis=2)
      turn = hashing.reduce_range(
          hashing.mix64(kicked + tf.cast(rnd, tf.int64) * nb, 78), s)
      score = tf.where(other_free > 0, 0, s) + tf.cast(
          (slot_index[None, :] + turn[:, None]) % s, tf.int32)
      victim_slot = tf.argmin(score, axis=1, output_type=tf.int64)
      displaced_keys = tf.gather(victim_keys, victim_slot, batch_dims=1)
      displaced_rows = tf.cast(
          tf.gather(kick_contents[:, s:], victim_slot, batch_dims=1),
          tf.int32)
      displaced_other = tf.gather(other, victim_slot, batch_dims=1)
      slot = tf.tensor_scatter_nd_update(slot, at[:, None], victim_slot)

      # Each placed key takes an empty slot or its victim's: no slot empties.
      moving = tf.logical_or(fill, kick)
      placed = tf.where(moving)[:, 0]
      self._write_buckets(
          tf.gather(bucket, placed),
          self._with_slot(tf.gather(contents, placed), tf.gather(slot, placed),
                          tf.gather(keys, placed), tf.gather(rows, placed)),
          fills_only=True)

      waiting = tf.logical_not(moving)
      return (rnd + 1,
              tf.concat([tf.boolean_mask(keys, waiting), displaced_keys], 0),
              tf.concat([tf.boolean_mask(rows, waiting), displaced_rows], 0),
              tf.concat([tf.boolean_mask(avoid, waiting), kicked], 0),
              tf.concat([tf.boolean_mask(b1, waiting), kicked], 0),
              tf.concat([tf.boolean_mask(b2, waiting), displaced_other], 0))

    def cond(rnd, keys, *_):
      return tf.logical_and(rnd < max_rounds, tf.size(keys) > 0)

    vector = tf.TensorShape([None])
    b1, b2 = self._buckets(keys)
    _, keys, rows, _, _, _ = tf.while_loop(
        cond, body,
        [tf.constant(0), keys, rows,
         tf.fill(tf.shape(keys), tf.constant(-1, tf.int64)), b1, b2],
        shape_invariants=[tf.TensorShape([])] + [vector] * 5)
    return keys, rows

  def _insert_new(self, keys, now, counts):
    """Gives rows to new, unique keys that fit.

    Returns:
      `(unsettled, rows)`: whether some keys could not simply be placed (so
      keys may have moved or gone), and the rows given to `keys[:len(rows)]`.
    """
    n = tf.minimum(tf.size(keys, out_type=tf.int64), self.num_free)
    fitted = keys[:n]
    rows = self._pop_free(n)
    rows64 = tf.cast(rows, tf.int64)
    scatter(self.row_keys, rows64, fitted)
    scatter(self.row_live, rows64, tf.ones_like(rows))
    scatter(self.row_last_seen, rows64, tf.fill(tf.shape(fitted), now))
    scatter(self.row_count, rows64, counts[:n])
    scatter(self.row_dirty, rows64, tf.ones_like(rows))
    left_keys, left_rows = self._place(fitted, rows, True)
    self.rejected.assign_add(tf.size(keys, out_type=tf.int64) - n)
    unsettled = tf.size(left_keys) > 0
    settled = tf.cond(
        unsettled,
        lambda: self._settle_leftovers(fitted, rows, left_keys, left_rows, n),
        lambda: tf.constant(0))
    with tf.control_dependencies([settled]):
      return tf.identity(unsettled), rows

  def _settle_leftovers(self, fitted, rows, left_keys, left_rows, n):
    """Handles keys `_place` could not place; returns how many old keys
    were dropped (only if putting displaced keys back failed)."""
    left_keys, left_rows = tf.cond(
        tf.reduce_all(isin(left_rows, rows)),
        lambda: (left_keys, left_rows),
        lambda: self._put_back_displaced(fitted, rows, left_keys, left_rows))
    left_new = isin(left_rows, rows)
    if self._full_policy == "evict_lru":
      # A new key whose two buckets are full (and stay full after cuckoo
      # moves) takes the slot of the least recently seen key among them.
      self._evict_into_buckets(tf.boolean_mask(left_keys, left_new),
                               tf.boolean_mask(left_rows, left_new))
      left_keys = tf.boolean_mask(left_keys, tf.logical_not(left_new))
      left_rows = tf.boolean_mask(left_rows, tf.logical_not(left_new))
      left_new = tf.zeros_like(left_rows, tf.bool)
    # Leftovers lose their row. They are new keys, except (only if putting
    # back failed) keys displaced from the table: those are recorded as
    # removed, so that patches tell replicas.
    displaced = tf.boolean_mask(left_keys, tf.logical_not(left_new))
    self._push_free(left_rows)
    self._record_removed(displaced)
    unplaced = tf.size(left_keys, out_type=tf.int64) - tf.size(
        displaced, out_type=tf.int64)
    self.rejected.assign_add(unplaced)
    if self._full_policy == "error":
      # All or nothing: take this insert's keys out again, then fail.
      def roll_back():
        placed = tf.logical_not(isin(rows, left_rows))
        self._unindex(tf.boolean_mask(fitted, placed))
        self._push_free(tf.boolean_mask(rows, placed))
        return tf.constant(0)

      done = tf.cond(unplaced > 0, roll_back, lambda: tf.constant(0))
      with tf.control_dependencies([done]):
        check = tf.debugging.Assert(
            unplaced <= 0,
            ["CuckooHashTable cannot place", unplaced, "of", n,
             "new keys: their buckets are full (index load",
             self.index_load_factor(), "; full_policy='error'). Nothing "
             "was inserted."])
      with tf.control_dependencies([check]):
        return tf.size(displaced)
    return tf.size(displaced)

  def _evict_into_buckets(self, keys, rows):
    """Places each key in its buckets over their least recently seen key."""
    s = self._slots

    def body(i, _):
      key = keys[i]
      b1, b2 = self._buckets(key[None])
      pair = tf.concat([b1, b2], 0)
      contents = tf.gather(self.buckets, pair)                    # [2, 2s]
      occupants = tf.reshape(contents[:, s:], [2 * s])
      seen = tf.where(occupants < 0, tf.int64.min,
                      tf.gather(self.row_last_seen,
                                tf.maximum(occupants, 0)))
      best = tf.argmin(seen, output_type=tf.int32)
      victim = tf.cast(occupants[best], tf.int32)

      def evict():
        self._record_removed(tf.gather(self.row_keys, victim)[None])
        self._push_free(victim[None])
        return tf.constant(0)

      done = tf.cond(victim >= 0, evict, lambda: tf.constant(0))
      with tf.control_dependencies([done]):
        which = best // s
        written = self._write_buckets(
            pair[which][None],
            self._with_slot(contents[which][None], (best % s)[None],
                            key[None], rows[i][None]))
      with tf.control_dependencies([written]):
        return i + 1, tf.identity(done)

    tf.while_loop(lambda i, _: i < tf.size(keys), body,
                  [tf.constant(0), tf.constant(0)])

  def _put_back_displaced(self, keys, rows, left_keys, left_rows):
    """After a failed placement, old keys win over the new ones.

    Takes this insert's placed keys out of the index again, re-places the
    displaced old keys (they fitted before the insert, so they fit without
    the new ones), then puts back new keys only into free slots.
    """
    left_new = isin(left_rows, rows)
    placed = tf.logical_not(isin(rows, left_rows))
    placed_keys = tf.boolean_mask(keys, placed)
    placed_rows = tf.boolean_mask(rows, placed)
    unindexed = self._unindex(placed_keys)
    with tf.control_dependencies([unindexed]):
      old_keys, old_rows = self._place(
          tf.boolean_mask(left_keys, tf.logical_not(left_new)),
          tf.boolean_mask(left_rows, tf.logical_not(left_new)), True)
    with tf.control_dependencies([old_keys, old_rows]):
      new_keys, new_rows = self._place(placed_keys, placed_rows, False)
    return (tf.concat([old_keys, new_keys,
                       tf.boolean_mask(left_keys, left_new)], 0),
            tf.concat([old_rows, new_rows,
                       tf.boolean_mask(left_rows, left_new)], 0))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                tf.TensorSpec([], tf.int64),
                                tf.TensorSpec([None], tf.int64)],
               autograph=False)
  def upsert_unique(self, unique_keys: tf.Tensor, now: tf.Tensor,
                    counts: tf.Tensor):
    """Inserts the absent ones of 1-D unique int64 keys (graph building block).

    All keys given are marked seen at `now` (and dirty) and their occurrence
    counts grow by `counts`.

    Args:
      unique_keys: 1-D int64 tensor without duplicates.
      now: int64 event time (seconds) recorded as last-seen.
      counts: int64 occurrences of each key to add to its count.

    Returns:
      `(rows, is_new)`: int32 rows of `unique_keys` (-1 where none could be
      given) and a bool mask of the keys that got a fresh row in this call.
    """
    now = self._now(now)
    rows = self.lookup_flat(unique_keys)
    absent = rows < 0
    new_keys = tf.boolean_mask(unique_keys, absent)
    num_new = tf.size(new_keys, out_type=tf.int64)
    shortfall = num_new - self.num_free
    checks = []
    if self._full_policy == "error":
      checks.append(tf.debugging.Assert(
          shortfall <= 0,
          ["CuckooHashTable is full: cannot insert", num_new,
           "new keys with", self.num_free, "free rows of capacity",
           self._capacity, "(full_policy='error')."]))
    present = tf.boolean_mask(rows, rows >= 0)
    present_counts = tf.boolean_mask(counts, rows >= 0)
    new_counts = tf.boolean_mask(counts, absent)
    with tf.control_dependencies(checks):
      if self._full_policy == "evict_lru":
        # Present keys are seen now, so LRU eviction picks others first,
        # and never a key seen now: those are in use.
        self.touch_rows(present, now, present_counts)

        def make_room():
          # Counts the idle rows (a pass over all rows) only when short.
          idle = tf.reduce_sum(tf.cast(tf.logical_and(
              self.row_live > 0, self.row_last_seen < now), tf.int64))
          evicted = tf.cond(
              idle > 0,
              lambda: tf.size(self.evict_lru(tf.minimum(shortfall, idle))),
              lambda: tf.constant(0))
          with tf.control_dependencies([evicted]):
            return tf.identity(idle)

        idle = tf.cond(shortfall > 0, make_room,
                       lambda: tf.constant(0, tf.int64))
        # Not all fit: the most frequent new keys go first (the rest are
        # refused by `_insert_new` and counted).
        new_keys, new_counts = tf.cond(
            shortfall > idle,
            lambda: _by_count(new_keys, new_counts),
            lambda: (new_keys, new_counts))

      def insert_and_look_up():
        unsettled, new_rows = self._insert_new(new_keys, now, new_counts)
        simple = tf.logical_and(
            tf.logical_not(unsettled),
            tf.logical_and(shortfall <= 0,
                           tf.size(new_rows, out_type=tf.int64) == num_new))
        # Evictions, displacement or a partial insert can move or drop keys
        # of this batch: then look everything up again.
        return tf.cond(
            simple,
            lambda: tf.tensor_scatter_nd_update(rows, tf.where(absent),
                                                new_rows),
            lambda: self.lookup_flat(unique_keys))

      rows = tf.cond(num_new > 0, insert_and_look_up, lambda: rows)
      if self._full_policy == "error":
        with tf.control_dependencies([rows]):
          self.touch_rows(present, now, present_counts)
    return rows, tf.logical_and(absent, rows >= 0)

  def insert_flat(self, keys: tf.Tensor, now=None) -> tf.Tensor:
    """`insert` for 1-D int64 keys (graph building block)."""
    unique_keys, index = tf.unique(keys)
    rows, _ = self.upsert_unique(unique_keys, self._now(now),
                                 tf.zeros_like(unique_keys))
    return tf.gather(rows, index)

  def insert(self, keys, now=None) -> tf.Tensor:
    """Gives a row to each new key; returns the rows of all `keys`.

    Keys already present keep their rows. Rows of new keys are not touched
    here: their content is the caller's (the embedding layer initialises it).

    Args:
      keys: int or string ids of any shape.
      now: event time in seconds recorded as the keys' last-seen time;
        defaults to wall time.

    Returns:
      int64 rows of the shape of `keys`; -1 for keys that got no row (only
      possible when more new keys than `capacity` arrive at once).

    Raises:
      InvalidArgumentError: with `full_policy="error"`, when the new keys do
        not fit; the table is then left unchanged.
    """
    keys = hashing.to_keys(keys, "keys")
    flat = tf.reshape(keys, [-1])
    if tf.executing_eagerly():  # One graph instead of op-by-op rounds.
      rows = self._insert_graph(flat, self._now(now))
    else:
      rows = self.insert_flat(flat, now)
    return tf.reshape(tf.cast(rows, tf.int64), tf.shape(keys))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                tf.TensorSpec([], tf.int64)],
               autograph=False)
  def _insert_graph(self, keys, now):
    return self.insert_flat(keys, now)

  # ------------------------------------------------------------------- remove

  def remove_flat(self, keys: tf.Tensor) -> tf.Tensor:
    """`remove` for 1-D int64 keys (graph building block)."""
    unique_keys, index = tf.unique(keys)
    rows = self._unindex(unique_keys)
    found = rows >= 0
    self._push_free(tf.boolean_mask(rows, found))
    self._record_removed(tf.boolean_mask(unique_keys, found))
    return tf.gather(found, index)

  def remove(self, keys) -> tf.Tensor:
    """Removes `keys`, freeing their rows; returns which ones were present.

    Removed keys are listed by the next `take_changes` (and so in the next
    embedding patch).

    Args:
      keys: int or string ids of any shape.

    Returns:
      bool tensor of the shape of `keys`.
    """
    keys = hashing.to_keys(keys, "keys")
    flat = tf.reshape(keys, [-1])
    if tf.executing_eagerly():
      found = self._remove_graph(flat)
    else:
      found = self.remove_flat(flat)
    return tf.reshape(found, tf.shape(keys))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)],
               autograph=False)
  def _remove_graph(self, keys):
    return self.remove_flat(keys)

  # ------------------------------------------------------- time and eviction

  def _now(self, now):
    if now is None:
      return tf.cast(tf.timestamp(), tf.int64)
    return tf.cast(now, tf.int64)

  def touch_rows(self, rows, now, count=None):
    """Marks `rows` seen at `now` (and dirty); adds `count` occurrences."""
    rows64 = tf.cast(rows, tf.int64)
    now = self._now(now)
    scatter(self.row_last_seen, rows64, tf.fill(tf.shape(rows), now), "max")
    scatter(self.row_dirty, rows64, tf.ones_like(rows64, tf.int32))
    if count is not None:
      scatter(self.row_count, rows64, tf.cast(count, tf.int64), "add")

  def lookup_touch(self, keys, now, counts):
    """Rows of 1-D int64 `keys`; marks them seen if every counted key has one.

    The steady-state step of training as one building block (the embedding
    layer compiles it with XLA): when every key whose `counts` entry is
    nonzero has a row, those rows are marked seen at `now` and dirty and
    their occurrence counts grow by `counts`; otherwise nothing changes.
    Keys with a zero count (padding) are looked up but never touched.

    Returns:
      `(rows, present)`: int32 rows (-1 where absent) and whether every
      counted key had a row (and so was touched).
    """
    rows = self.lookup_flat(keys)
    counted = counts > 0
    present = tf.reduce_all(tf.logical_or(rows >= 0, tf.logical_not(counted)))
    touch = tf.logical_and(present, counted)
    # Untouched entries scatter neutral values (max with the minimum, add 0)
    # into row 0, so the update needs no branch.
    at = tf.cast(tf.where(touch, rows, 0), tf.int64)
    now = tf.cast(now, tf.int64)
    scatter(self.row_last_seen, at,
            tf.where(touch, now, tf.int64.min), "max")
    scatter(self.row_dirty, at, tf.cast(touch, tf.int32), "max")
    scatter(self.row_count, at,
            tf.where(touch, tf.cast(counts, tf.int64), 0), "add")
    return rows, present

  def live_rows(self) -> tf.Tensor:
    """Rows that hold a key, ascending (int32)."""
    return tf.cast(tf.where(self.row_live > 0)[:, 0], tf.int32)

  def expire(self, cutoff) -> tf.Tensor:
    """Removes keys last seen before `cutoff` (seconds); returns them."""
    stale = tf.logical_and(self.row_live > 0,
                           self.row_last_seen < tf.cast(cutoff, tf.int64))
    keys = tf.boolean_mask(self.row_keys, stale)
    self.remove_flat(keys)
    return keys

  def evict_lru(self, n) -> tf.Tensor:
    """Removes the `n` least recently seen keys; returns them."""
    n = tf.cast(n, tf.int32)
    live = self.row_live > 0
    age = tf.where(live, -self.row_last_seen, tf.int64.min)
    k = tf.minimum(n, tf.reduce_sum(tf.cast(live, tf.int32)))
    _, rows = tf.math.top_k(age, k=k, sorted=False)
    keys = tf.gather(self.row_keys, rows)
    self.remove_flat(keys)
    return keys

  # ------------------------------------------------------------------ changes

  def take_changes(self):
    """Returns and clears what changed since the last call.

    Returns:
      A tuple `(rows, keys, removed, full)`: rows touched since the last call
      and their keys (ascending rows), keys removed since then that are not
      live now, and `full` (bool scalar): True when the removed-key log
      overflowed, in which case `rows` holds every live row and the reader
      must drop any key not listed.
    """
    full = self.removed_overflow > 0
    dirty = tf.logical_and(self.row_live > 0,
                           tf.logical_or(self.row_dirty > 0, full))
    rows = tf.cast(tf.where(dirty)[:, 0], tf.int32)
    keys = tf.gather(self.row_keys, rows)
    removed = tf.unique(self.removed_keys[:self.num_removed.read_value()])[0]
    removed = tf.boolean_mask(removed, self.lookup_flat(removed) < 0)
    removed = tf.cond(full, lambda: removed[:0], lambda: removed)
    with tf.control_dependencies([rows, keys, removed]):
      self.row_dirty.assign(tf.zeros_like(self.row_dirty))
      self.num_removed.assign(0)
      self.removed_overflow.assign(0)
    return rows, keys, removed, full
