"""Tests for `tfrs_monolith.CuckooHashTable`."""

import numpy as np
import pytest
import tensorflow as tf

import tfrs_monolith as tm
from tfrs_monolith import hashing


def _random_keys(n, seed=0):
  return np.unique(np.random.default_rng(seed).integers(
      -2**63, 2**63 - 1, size=n, dtype=np.int64))


class TestBasics:

  def test_insert_lookup_remove(self):
    table = tm.CuckooHashTable(capacity=10)
    np.testing.assert_array_equal(table.insert([7, 42, 7]).numpy(), [0, 1, 0])
    np.testing.assert_array_equal(table.lookup([[42, 5], [7, 7]]).numpy(),
                                  [[1, -1], [0, 0]])
    assert table.size().numpy() == 2
    np.testing.assert_array_equal(table.remove([7, 3]).numpy(), [True, False])
    assert table.size().numpy() == 1
    np.testing.assert_array_equal(table.lookup([7, 42]).numpy(), [-1, 1])
    # The freed row is reused by the next new key.
    np.testing.assert_array_equal(table.insert([9]).numpy(), [0])

  def test_accepts_numpy_tensors_and_strings(self):
    table = tm.CuckooHashTable(capacity=10)
    rows = table.insert(np.array([1, 2], np.int32))
    np.testing.assert_array_equal(
        table.lookup(tf.constant([2, 1], tf.int64)).numpy(),
        rows.numpy()[::-1])
    row = table.insert(["user-1"]).numpy()[0]
    assert table.lookup(np.array(["user-1"])).numpy()[0] == row
    assert table.lookup([b"user-2"]).numpy()[0] == -1

  def test_extreme_keys(self):
    table = tm.CuckooHashTable(capacity=10)
    keys = [0, -1, 2**63 - 1, -2**63, 1]
    rows = table.insert(keys).numpy()
    assert sorted(rows.tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(table.lookup(keys).numpy(), rows)

  def test_two_buckets_are_distinct(self):
    table = tm.CuckooHashTable(capacity=4, slots_per_bucket=2)
    assert table.num_buckets >= 2
    b1, b2 = table._buckets(tf.constant(_random_keys(5000)))
    assert not np.any(b1.numpy() == b2.numpy())
    assert b1.numpy().max() < table.num_buckets
    assert b2.numpy().max() < table.num_buckets

  @pytest.mark.parametrize("name, kwargs, message", [
      ("capacity", {"capacity": 0}, "capacity=0"),
      ("capacity", {"capacity": -5}, "capacity=-5"),
      ("capacity", {"capacity": 2.5}, "capacity=2.5"),
      ("capacity", {"capacity": True}, "capacity=True"),
      ("slots", {"capacity": 8, "slots_per_bucket": 0}, "slots_per_bucket=0"),
      ("buckets", {"capacity": 8, "num_buckets": 1}, "num_buckets=1"),
      ("policy", {"capacity": 8, "full_policy": "drop"}, "full_policy='drop'"),
  ])
  def test_invalid_arguments(self, name, kwargs, message):
    del name
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
      tm.CuckooHashTable(**kwargs)

  def test_float_keys_rejected(self):
    table = tm.CuckooHashTable(capacity=4)
    with pytest.raises(TypeError, match="keys.*float"):
      table.insert([1.5, 2.0])
    with pytest.raises(TypeError, match="keys.*float32"):
      table.lookup(tf.constant([1.0]))


class TestPlacement:

  def test_rows_never_move_under_displacement(self):
    # A tight index (no headroom) forces many cuckoo displacements.
    capacity = 4000
    table = tm.CuckooHashTable(capacity=capacity, slots_per_bucket=4,
                               num_buckets=capacity // 4 + 2)
    keys = _random_keys(capacity)[:int(capacity * 0.95)]
    insert = tf.function(lambda k: table.insert_flat(k, 0))
    first = insert(tf.constant(keys[:1000])).numpy()
    rest = insert(tf.constant(keys[1000:])).numpy()
    assert (first >= 0).all() and (rest >= 0).all()
    np.testing.assert_array_equal(table.lookup(keys[:1000]).numpy(), first)
    rows = table.lookup(keys).numpy()
    assert len(np.unique(rows)) == len(keys)
    assert table.rejected.numpy() == 0

  @pytest.mark.parametrize("slots, minimum", [(8, 0.98), (4, 0.96)])
  def test_fills_tight_index(self, slots, minimum):
    capacity = 16000
    table = tm.CuckooHashTable(capacity=capacity, slots_per_bucket=slots,
                               num_buckets=capacity // slots,
                               full_policy="error")
    keys = _random_keys(capacity + 100, seed=slots)
    insert = tf.function(lambda k: table.insert_flat(k, 0))
    with pytest.raises(tf.errors.InvalidArgumentError, match="cannot place"):
      for start in range(0, capacity, 100):
        insert(tf.constant(keys[start:start + 100]))
    # Load reached before the insert in which the first placement failed;
    # that insert changed nothing.
    assert table.size().numpy() == start
    assert start / capacity >= minimum
    assert len(np.unique(table.lookup(keys[:start]).numpy())) == start
    assert (table.lookup(keys[:start]).numpy() >= 0).all()

  def test_lru_within_buckets_when_placement_fails(self):
    capacity = 4000
    table = tm.CuckooHashTable(capacity=capacity, slots_per_bucket=4,
                               num_buckets=capacity // 4)
    keys = _random_keys(capacity, seed=3)
    insert = tf.function(lambda k, t: table.insert_flat(k, t))
    for start in range(0, capacity, 200):
      rows = insert(tf.constant(keys[start:start + 200]),
                    tf.constant(start, tf.int64)).numpy()
      # New keys always get a row: where their buckets are full, the least
      # recently seen key there makes room, and is reported as removed.
      assert (rows >= 0).all()
    _, _, removed, _ = table.take_changes()
    removed = removed.numpy()
    assert 0 < len(removed) < capacity * 0.05
    assert table.size().numpy() == capacity - len(removed)
    assert (table.lookup(removed).numpy() == -1).all()
    # The newest keys were never the ones to go.
    assert not set(removed.tolist()) & set(keys[-200:].tolist())

  def test_lookup_compiles_with_xla(self):
    table = tm.CuckooHashTable(capacity=100)
    keys = _random_keys(80)
    table.insert(keys)
    probe = np.concatenate([keys, _random_keys(20, seed=9)])
    graph = tf.function(table.lookup_flat)(tf.constant(probe)).numpy()
    xla = tf.function(table.lookup_flat, jit_compile=True)(
        tf.constant(probe)).numpy()
    compiled = tf.function(lambda k: table.lookup_flat(k, compiled=True),
                           jit_compile=True)(tf.constant(probe)).numpy()
    np.testing.assert_array_equal(graph, xla)
    np.testing.assert_array_equal(graph, compiled)
    assert (xla[:80] >= 0).all() and (xla[80:] == -1).all()

  def test_compiled_probe_through_removals(self):
    # Removed keys come back in other slots; small keys include the two
    # keys that empty slots hold, so they are inserted and removed too.
    table = tm.CuckooHashTable(capacity=100, slots_per_bucket=2)
    compiled = tf.function(lambda k: table.lookup_flat(k, compiled=True),
                           jit_compile=True)
    keys = np.arange(-8, 80, dtype=np.int64)
    rng = np.random.default_rng(3)
    table.insert(keys)
    for _ in range(15):
      table.remove(rng.choice(keys, 30, replace=False))
      table.insert(rng.choice(keys, 30, replace=False))
      expected = table.lookup(keys).numpy()
      np.testing.assert_array_equal(compiled(tf.constant(keys)).numpy(),
                                    expected)
    assert (expected >= 0).sum() == table.size().numpy()

  def test_rewrite_empty_slots_of_an_older_index(self):
    table = tm.CuckooHashTable(capacity=40)
    keys = _random_keys(30)
    rows = table.insert(keys).numpy()
    s = table.slots_per_bucket
    contents = table.buckets.numpy()
    # As earlier versions left it: a removed copy of a key lingers, with no
    # row, in an empty slot that the probe reads after the key's own slot.
    for key, row in zip(keys, rows):
      b1, b2 = (int(b[0]) for b in table._buckets(tf.constant([key])))  # pylint: disable=protected-access
      order = [(b, j) for b in (b1, b2) for j in range(s)]
      own = next(i for i, (b, j) in enumerate(order)
                 if contents[b, j] == key and contents[b, s + j] == row)
      later = [(b, j) for b, j in order[own + 1:] if contents[b, s + j] < 0]
      if later:
        break
    else:
      pytest.fail("no empty slot after any key's own")
    b, j = later[0]
    contents[b, j] = key
    table.buckets.assign(contents)
    compiled = tf.function(lambda k: table.lookup_flat(k, compiled=True),
                           jit_compile=True)
    probe = tf.constant(keys)
    # Every row is checked without XLA; the compiled probe is unsure (-2).
    np.testing.assert_array_equal(table.lookup(keys).numpy(), rows)
    got = compiled(probe).numpy()
    assert got[list(keys).index(key)] == -2
    assert int(table.rewrite_empty_slots()) == 1
    np.testing.assert_array_equal(compiled(probe).numpy(), rows)
    assert int(table.rewrite_empty_slots()) == 0

  def test_hash_matches_numpy_and_xla(self):
    keys = _random_keys(1000)
    eager = hashing.mix64(tf.constant(keys), 5).numpy()
    xla = tf.function(lambda k: hashing.mix64(k, 5), jit_compile=True)(
        tf.constant(keys)).numpy()
    np.testing.assert_array_equal(eager, hashing.np_mix64(keys, 5))
    np.testing.assert_array_equal(eager, xla)


class TestFullPolicy:

  def test_error_policy_raises_and_changes_nothing(self):
    table = tm.CuckooHashTable(capacity=3, full_policy="error")
    table.insert([1, 2])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="CuckooHashTable is full"):
      table.insert([2, 3, 4])
    assert table.size().numpy() == 2
    np.testing.assert_array_equal(table.lookup([1, 2, 3, 4]).numpy(),
                                  [0, 1, -1, -1])

  def test_lru_eviction(self):
    table = tm.CuckooHashTable(capacity=4)
    for t, key in enumerate([10, 11, 12, 13]):
      table.insert([key], now=100 + t)
    table.insert([10], now=200)  # 10 is now the most recently seen.
    rows_before = table.lookup([10, 12, 13]).numpy()
    rows_lru = table.lookup([11, 12]).numpy()
    # Two new keys: the two least recently seen (11 at t=101, 12 at t=102)
    # must go, and their rows are the ones reused.
    rows = table.insert([20, 21], now=300).numpy()
    np.testing.assert_array_equal(table.lookup([11, 12]).numpy(), [-1, -1])
    assert sorted(rows.tolist()) == sorted(rows_lru.tolist())
    np.testing.assert_array_equal(table.lookup([10, 13]).numpy(),
                                  rows_before[[0, 2]])
    _, _, removed, full = table.take_changes()
    assert sorted(removed.numpy().tolist()) == [11, 12]
    assert not full.numpy()

  def test_more_new_keys_than_capacity(self):
    table = tm.CuckooHashTable(capacity=4)
    rows = table.insert([1, 2, 3, 4, 5, 6]).numpy()
    assert (rows >= 0).sum() == 4 and (rows == -1).sum() == 2
    assert table.rejected.numpy() == 2


class TestTimeAndChanges:

  def test_expire(self):
    table = tm.CuckooHashTable(capacity=8)
    table.insert([1, 2], now=10)
    table.insert([3], now=20)
    table.touch_rows(table.lookup([1]), now=30)
    expired = table.expire(cutoff=25).numpy()
    assert sorted(expired.tolist()) == [2, 3]
    np.testing.assert_array_equal(table.lookup([1, 2, 3]).numpy() >= 0,
                                  [True, False, False])
    assert table.size().numpy() == 1

  @pytest.mark.parametrize("jit_compile", [False, True])
  def test_lookup_touch(self, jit_compile):
    table = tm.CuckooHashTable(capacity=8)
    table.insert([1, 2, 3], now=10)
    table.take_changes()
    lookup_touch = tf.function(table.lookup_touch, jit_compile=jit_compile,
                               autograph=False)
    rows = table.lookup([1, 2, 3]).numpy()
    state = lambda: [v.numpy().copy() for v in (
        table.row_last_seen, table.row_count, table.row_dirty)]

    # Key 9 is absent: nothing is touched.
    before = state()
    got, present = lookup_touch(tf.constant([1, 9, 1], tf.int64), 20,
                                tf.constant([1, 1, 1], tf.int64))
    assert not present.numpy()
    np.testing.assert_array_equal(got.numpy(), [rows[0], -1, rows[0]])
    for old, new in zip(before, state()):
      np.testing.assert_array_equal(new, old)

    # Every counted key is present; the absent key 9 has a zero count
    # (padding): rows 1 and 2 are touched, 9 and row 3 are not.
    got, present = lookup_touch(tf.constant([1, 2, 1, 9], tf.int64), 20,
                                tf.constant([1, 1, 1, 0], tf.int64))
    assert present.numpy()
    np.testing.assert_array_equal(got.numpy(), [rows[0], rows[1], rows[0], -1])
    last_seen, count, dirty = state()
    np.testing.assert_array_equal(last_seen[rows], [20, 20, 10])
    np.testing.assert_array_equal(count[rows] - before[1][rows], [2, 1, 0])
    np.testing.assert_array_equal(dirty[rows], [1, 1, 0])
    untouched = np.setdiff1d(np.arange(8), rows)
    np.testing.assert_array_equal(last_seen[untouched],
                                  before[0][untouched])

  def test_take_changes(self):
    table = tm.CuckooHashTable(capacity=8)
    table.insert([1, 2, 3])
    table.take_changes()
    table.touch_rows(table.lookup([2]), now=5)
    table.remove([3])
    table.insert([4])
    rows, keys, removed, full = table.take_changes()
    assert sorted(keys.numpy().tolist()) == [2, 4]
    np.testing.assert_array_equal(table.row_keys.numpy()[rows.numpy()],
                                  keys.numpy())
    assert removed.numpy().tolist() == [3]
    assert not full.numpy()
    rows, keys, removed, _ = table.take_changes()
    assert keys.numpy().size == 0 and removed.numpy().size == 0

  def test_removed_then_readmitted_is_not_reported_removed(self):
    table = tm.CuckooHashTable(capacity=8)
    table.insert([1, 2])
    table.take_changes()
    table.remove([1])
    table.insert([1])
    _, keys, removed, _ = table.take_changes()
    assert keys.numpy().tolist() == [1] and removed.numpy().size == 0

  def test_removed_log_overflow_gives_full_snapshot(self):
    table = tm.CuckooHashTable(capacity=2)
    table.insert([1, 2])
    table.take_changes()
    table.remove([1, 2])
    table.insert([3])
    table.remove([3])        # 3 removals > capacity 2
    table.insert([4])
    rows, keys, removed, full = table.take_changes()
    assert full.numpy()
    assert keys.numpy().tolist() == [4] and removed.numpy().size == 0
    del rows


def test_checkpoint_round_trip(tmp_path):
  table = tm.CuckooHashTable(capacity=50)
  keys = _random_keys(40)
  rows = table.insert(keys, now=7).numpy()
  table.remove(keys[:5])
  path = tf.train.Checkpoint(table=table).save(str(tmp_path / "ckpt"))
  restored = tm.CuckooHashTable(capacity=50)
  tf.train.Checkpoint(table=restored).restore(path).assert_consumed()
  np.testing.assert_array_equal(restored.lookup(keys).numpy(),
                                table.lookup(keys).numpy())
  np.testing.assert_array_equal(restored.lookup(keys[5:]).numpy(), rows[5:])
  assert restored.size().numpy() == 35
  # The free list came back too: the next key takes a freed row.
  new_row = restored.insert([12345]).numpy()[0]
  assert new_row in rows[:5]
