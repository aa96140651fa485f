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
"""Implements `CountMinSketch`, the frequency counter behind admission."""

from typing import Optional

import tensorflow as tf

from tfrs_monolith import hashing

__all__ = ["CountMinSketch"]

_SEEDS = (0x0AD1_5510_0000_0001, 0x0AD1_5510_0000_0002,
          0x0AD1_5510_0000_0003, 0x0AD1_5510_0000_0004,
          0x0AD1_5510_0000_0005, 0x0AD1_5510_0000_0006,
          0x0AD1_5510_0000_0007, 0x0AD1_5510_0000_0008)


class CountMinSketch(tf.Module):
  """Approximate occurrence counts of int64 keys in fixed memory.

  A count-min sketch (Cormode & Muthukrishnan, 2005) with conservative update:
  `depth` rows of `width` int32 counters; a key's estimate is the minimum of
  its `depth` counters, never below its true count, and above it by at most
  `e * total / width` with probability `1 - exp(-depth)`.

  It is how `CollisionlessEmbedding` admits a key only after `min_count`
  occurrences without giving never-admitted keys a row: the sketch costs
  `4 * depth * width` bytes whatever the number of distinct keys.

  On an endless stream every counter keeps growing, and so does the error,
  until every key passes any threshold. With a `window`, the sketch ages
  (as TinyLFU does): once it has counted `window` occurrences, all counters
  halve, so estimates follow recent occurrences and the error stays bounded
  (about `e * window / width`) instead of growing with the stream.

  Example:

  ```python
  sketch = tm.CountMinSketch(width=1024)
  sketch.add(tf.constant([5, 5, 9], tf.int64))   # -> estimates [2, 2, 1]
  sketch.estimate(tf.constant([5], tf.int64))     # -> [2]
  ```

  Args:
    width: Counters per row.
    depth: Rows, i.e. independent hash functions (1 to 8).
    window: Occurrences after which all counters halve (as often as needed
      to bring the count since the last halving below `window`). None: the
      counts never age.
    name: Module name.
  """

  def __init__(self, width: int, depth: int = 4,
               window: Optional[int] = None, name: Optional[str] = None):
    super().__init__(name=name)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
      raise ValueError(
          f"`width` must be a positive integer. Received: width={width!r}")
    if (isinstance(depth, bool) or not isinstance(depth, int) or
        not 1 <= depth <= len(_SEEDS)):
      raise ValueError(f"`depth` must be an integer in [1, {len(_SEEDS)}]. "
                       f"Received: depth={depth!r}")
    if window is not None and (isinstance(window, bool) or
                               not isinstance(window, int) or window < 1):
      raise ValueError("`window` must be a positive integer or None. "
                       f"Received: window={window!r}")
    self._width = width
    self._depth = depth
    self._window = window
    with tf.init_scope():
      self.counters = tf.Variable(
          tf.zeros([depth * width], tf.int32), trainable=False,
          name="counters")
      # Occurrences counted since the counters last halved (scaled with
      # them), and how many halvings the window caused so far.
      self.occurrences = tf.Variable(
          tf.constant(0, tf.int64), trainable=False, name="occurrences")
      self.halvings = tf.Variable(
          tf.constant(0, tf.int64), trainable=False, name="halvings")

  @property
  def width(self) -> int:
    return self._width

  @property
  def depth(self) -> int:
    return self._depth

  @property
  def window(self) -> Optional[int]:
    return self._window

  def _cells(self, keys):
    """Flat counter index of each key in each row: [n, depth] int64."""
    cells = [
        hashing.reduce_range(hashing.mix64(keys, seed), self._width) +
        i * self._width for i, seed in enumerate(_SEEDS[:self._depth])
    ]
    return tf.stack(cells, axis=1)

  def estimate(self, keys: tf.Tensor) -> tf.Tensor:
    """Estimated counts (int32) of 1-D int64 `keys`; never underestimates."""
    return tf.reduce_min(tf.gather(self.counters, self._cells(keys)), axis=1)

  def add(self, keys: tf.Tensor, counts=None) -> tf.Tensor:
    """Counts `counts` more occurrences of each of the 1-D int64 `keys`.

    Keys should be unique within a call (pass their multiplicity as
    `counts`); duplicates are still never under-counted.

    Args:
      keys: 1-D int64 tensor.
      counts: occurrences to add per key (int), 1 by default.

    Returns:
      The updated estimates (int32), aligned with `keys`.
    """
    if counts is None:
      counts = tf.ones_like(keys, tf.int32)
    counts = tf.cast(counts, tf.int32)
    cells = self._cells(keys)
    current = tf.reduce_min(tf.gather(self.counters, cells), axis=1)
    # Conservative update: raise each counter only up to the new estimate.
    updated = current + counts
    update = self.counters.scatter_max(tf.IndexedSlices(
        tf.reshape(tf.tile(updated[:, None], [1, self._depth]), [-1]),
        tf.reshape(cells, [-1])))
    occurrences = self.occurrences.assign_add(
        tf.reduce_sum(tf.cast(counts, tf.int64)))
    if self._window is not None:
      with tf.control_dependencies([update]):
        self._age(occurrences)
    return updated

  def _age(self, occurrences):
    """Halves the counters as often as it takes to bring `occurrences`
    below the window; returns the number of halvings (int64 scalar)."""
    window = tf.constant(self._window, tf.int64)
    # The least k with occurrences >> k < window.
    k = tf.reduce_sum(tf.cast(
        tf.bitwise.right_shift(occurrences, tf.range(63, dtype=tf.int64)) >=
        window, tf.int64))

    def halve():
      self.counters.assign(tf.bitwise.right_shift(
          self.counters, tf.cast(tf.minimum(k, 31), tf.int32)))
      self.occurrences.assign(tf.bitwise.right_shift(occurrences, k))
      self.halvings.assign_add(k)
      return k

    return tf.cond(k > 0, halve, lambda: k)

  def decay(self, factor: float = 0.5):
    """Multiplies all counters by `factor` (floored), forgetting old counts."""
    self.counters.assign(tf.cast(
        tf.floor(tf.cast(self.counters, tf.float32) * factor), tf.int32))
    self.occurrences.assign(tf.cast(
        tf.floor(tf.cast(self.occurrences, tf.float64) * factor), tf.int64))
