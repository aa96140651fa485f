"""`CollisionlessEmbedding` under a flood of never-seen-again ids.

A table of `CAPACITY` rows trains on batches that each hold every one of
`NUM_FREQUENT` frequent ids (plus as many Zipf-distributed repeats of
them), then, during the flood, 10x that traffic of fresh ids. The
frequent ids' hit rate is the fraction of their lookups in a batch that
find a live row: before the batch (what serving reads) and after it (what
the batch's evictions left).

The clock moves one second per batch, as the online trainer advances it
with example timestamps: least-recently-seen eviction goes by that time.
"""

import numpy as np
import tensorflow as tf

import tfrs_monolith as tm

CAPACITY = 4096
NUM_FREQUENT = 512
FREQUENT_LOOKUPS = 2 * NUM_FREQUENT     # Per batch.
FLOOD_LOOKUPS = 10 * FREQUENT_LOOKUPS   # Per batch, during the flood.
WARM_BATCHES = 3
FLOOD_BATCHES = 6


def _check_no_shared_rows(layer):
  """Every live key has its own row, and the row knows its key."""
  table = layer.table
  keys = layer.live_keys().numpy()
  assert len(keys) == int(table.size())
  assert len(np.unique(keys)) == len(keys)
  rows = table.lookup(tf.constant(keys, tf.int64)).numpy()
  assert (rows >= 0).all() and len(np.unique(rows)) == len(rows)
  np.testing.assert_array_equal(table.row_keys.numpy()[rows], keys)


def _flood(repeat, admission_width=None, admission_window=None,
           flood_lookups=FLOOD_LOOKUPS, flood_batches=FLOOD_BATCHES, seed=0):
  """Trains through warm-up and flood batches; returns per-batch figures.

  Args:
    repeat: occurrences of each flood id, all in its one batch.
    admission_width: the admission sketch's width (layer default if None).
    admission_window: the layer's `admission_window` (0: counts never age).
    flood_lookups: flood lookups per batch.
    flood_batches: batches of the flood.
    seed: of the ids and the Zipf draws.

  Returns:
    A list of dicts (one per batch): `flood` (whether a flood batch),
    `hit_before`, `hit_after`, `size`, `misses` (unadmitted lookups so
    far) and `rejected` (ids refused a row by the full table so far).
  """
  rng = np.random.default_rng(seed)
  frequent = rng.choice(1 << 40, size=NUM_FREQUENT, replace=False)
  weights = 1.0 / np.arange(1, NUM_FREQUENT + 1)**1.1
  layer = tm.CollisionlessEmbedding(4, capacity=CAPACITY, min_count=2,
                                    admission_width=admission_width,
                                    admission_window=admission_window)
  next_flood_id = 1 << 50       # Flood ids: fresh, never seen again.
  now = 1_700_000_000
  figures = []
  for b in range(WARM_BATCHES + flood_batches):
    looked_up = np.concatenate([frequent, rng.choice(
        frequent, FREQUENT_LOOKUPS - NUM_FREQUENT, p=weights / weights.sum())])
    batch = [looked_up]
    if b >= WARM_BATCHES:
      fresh = next_flood_id + np.arange(flood_lookups // repeat)
      next_flood_id += fresh.size
      batch.append(np.repeat(fresh, repeat))
    batch = np.concatenate(batch)
    rng.shuffle(batch)
    now += 1
    layer.advance_clock(now)
    looked_up = tf.constant(looked_up, tf.int64)
    hit_before = layer.read_rows(looked_up)[1].numpy().mean()
    with tm.embedding.learning():
      layer(tf.constant(batch, tf.int64))
    _check_no_shared_rows(layer)
    figures.append({
        "flood": b >= WARM_BATCHES,
        "hit_before": float(hit_before),
        "hit_after": float(layer.read_rows(looked_up)[1].numpy().mean()),
        "size": int(layer.table.size()),
        "misses": layer.admission_counts()[1],
        "rejected": int(layer.table.rejected),
    })
  return figures


def test_once_seen_flood_ids_are_never_admitted():
  # A sketch wide enough for the flood (~0.5M distinct ids per width's
  # worth), whose counts never age: min_count=2 keeps every once-seen id out.
  figures = _flood(repeat=1, admission_width=1 << 21, admission_window=0)
  warm, flood = figures[WARM_BATCHES - 1], figures[WARM_BATCHES:]
  # Warm-up admits the frequent ids on their second batch.
  assert warm["hit_after"] == 1.0 and warm["size"] == NUM_FREQUENT
  assert FLOOD_BATCHES * FLOOD_LOOKUPS > 10 * CAPACITY
  for before, now in zip(figures[WARM_BATCHES - 1:], flood):
    assert now["size"] == NUM_FREQUENT
    assert now["hit_before"] == now["hit_after"] == 1.0
    # Every flood lookup missed (read the zero row), none took a row.
    assert now["misses"] - before["misses"] == FLOOD_LOOKUPS
    assert now["rejected"] == 0


def test_default_sketch_ages_and_keeps_once_seen_flood_ids_out():
  # The default sketch (width = CAPACITY) halves its counts after each
  # CAPACITY occurrences of ids without a row, so the flood (15x the
  # width in once-seen ids) never saturates it. A flood id still passes
  # when all its counters collide with admitted ids' counts (~1e-4 of the
  # first flood batch): measured, 1 of 61,440.
  figures = _flood(repeat=1)
  warm, flood = figures[WARM_BATCHES - 1], figures[WARM_BATCHES:]
  assert warm["size"] == NUM_FREQUENT
  assert flood[-1]["size"] - NUM_FREQUENT <= 0.001 * FLOOD_BATCHES * (
      FLOOD_LOOKUPS)
  assert all(f["hit_before"] == f["hit_after"] == 1.0 for f in flood)


def test_admitted_flood_evicts_stale_ids_not_frequent_ones():
  # Each flood id occurs 4 times, so passes admission: 2,560 new ids per
  # batch fill the table in two batches and then evict. They fit in the
  # rows not used by the batch (CAPACITY - NUM_FREQUENT), so the
  # least-recently-seen rows evicted are always earlier batches' flood ids.
  figures = _flood(repeat=4)
  flood = figures[WARM_BATCHES:]
  assert sum(FLOOD_LOOKUPS // 4 for _ in flood) > 3 * CAPACITY
  assert [f["size"] for f in flood][-3:] == [CAPACITY] * 3
  # Measured: 1.0 before and after every batch. The bound leaves room for
  # the cuckoo index's own evictions (a new id whose two buckets stay full
  # takes the slot of the least recently seen of their 8 ids).
  assert min(f["hit_before"] for f in flood) >= 0.99
  assert min(f["hit_after"] for f in flood) >= 0.99
  assert flood[-1]["rejected"] == 0


def test_sketch_without_aging_leaks_flood_ids_but_frequent_ids_keep_rows():
  # With counts that never age (width = CAPACITY), once-seen ids collide in
  # the sketch enough to pass min_count=2 once it has counted many distinct
  # ids, so the flood fills the table; the full-table policy then evicts
  # only idle flood ids, never the frequent ids in use.
  figures = _flood(repeat=1, admission_window=0, flood_batches=3)
  flood = figures[WARM_BATCHES:]
  assert flood[-1]["size"] == CAPACITY
  assert min(f["hit_before"] for f in flood) >= 0.99
  assert min(f["hit_after"] for f in flood) >= 0.99


def test_oversized_batch_keeps_the_batch_known_ids():
  # 4,096 new admitted ids in one batch: more than the 3,584 rows the
  # frequent ids leave. The excess is refused (counted in `rejected`), not
  # the frequent ids evicted.
  figures = _flood(repeat=4, flood_lookups=4 * CAPACITY, flood_batches=2)
  flood = figures[WARM_BATCHES:]
  assert min(f["hit_before"] for f in flood) >= 0.99
  assert min(f["hit_after"] for f in flood) >= 0.99
  assert flood[0]["rejected"] > 0
