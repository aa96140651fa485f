"""Property-based tests: the table and the layer against plain Python models.

Random sequences of insert / lookup / remove / expire / patch operations run
against a `CuckooHashTable` (tiny buckets, so keys are displaced all the
time) and against a trainer/replica pair of `CollisionlessEmbedding`s, and
must match a dict model step by step. One table and one layer pair live for
the whole module (building their graphs is the slow part); each run first
restores them from a checkpoint of their empty state.
"""

import tempfile

import hypothesis
from hypothesis import strategies as st
from hypothesis import stateful
import numpy as np
import tensorflow as tf

import tfrs_monolith as tm

_KEYS = st.one_of(st.integers(-8, 40), st.sampled_from([-2**63, 2**63 - 1]))
_BATCH = st.lists(_KEYS, min_size=0, max_size=6)
_SETTINGS = hypothesis.settings(
    max_examples=25, stateful_step_count=25, deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck))

_TABLE = tm.CuckooHashTable(capacity=12, slots_per_bucket=2,
                            full_policy="error")
_TRAINER = tm.CollisionlessEmbedding(2, capacity=10, ttl_seconds=20,
                                     full_policy="error", name="trainer")
_REPLICA = tm.CollisionlessEmbedding(2, capacity=10, name="replica")
_TRAINER.build(None)
_REPLICA.build(None)
_EMPTY = tf.train.Checkpoint(table=_TABLE, trainer=_TRAINER,
                             replica=_REPLICA)
_EMPTY_PATH = _EMPTY.write(tempfile.mkdtemp() + "/empty")


# The probe as XLA compiles it (`compiled`), on batches padded to one size.
_XLA_LOOKUP = tf.function(lambda k: _TABLE.lookup_flat(k, compiled=True),
                          jit_compile=True)


def _xla_lookup(keys):
  padded = np.zeros(8, np.int64)
  padded[:len(keys)] = keys
  return _XLA_LOOKUP(tf.constant(padded)).numpy()[:len(keys)].tolist()


def _reset():
  _EMPTY.read(_EMPTY_PATH).assert_consumed()


def _state(table):
  """{key: (row, last_seen)} of the live keys of `table`."""
  rows = table.live_rows().numpy()
  keys = table.row_keys.numpy()[rows]
  seen = table.row_last_seen.numpy()[rows]
  return {int(k): (int(r), int(s)) for k, r, s in zip(keys, rows, seen)}


class TableMachine(stateful.RuleBasedStateMachine):
  """`CuckooHashTable` against a dict of key -> (row, last seen)."""

  def __init__(self):
    super().__init__()
    _reset()
    self.table = _TABLE
    self.model = {}
    self.now = 1

  @stateful.rule(keys=_BATCH, dt=st.integers(0, 5))
  def insert(self, keys, dt):
    self.now += dt
    new = set(keys) - set(self.model)
    fits = len(self.model) + len(new) <= self.table.capacity
    try:
      rows = self.table.insert(np.array(keys, np.int64), now=self.now)
    except tf.errors.InvalidArgumentError as error:
      # Too many keys, or (tiny buckets) no placement for some of them:
      # either way all or nothing.
      assert "cannot place" in str(error) or not fits, str(error)
      assert _state(self.table) == self.model
      return
    assert fits, "insert into a full table did not raise"
    taken = {row for row, _ in self.model.values()}
    for key, row in zip(keys, rows.numpy().tolist()):
      if key in self.model:
        assert row == self.model[key][0], "a live key's row moved"
      else:
        assert row >= 0 and row not in taken, "a new key got a taken row"
      self.model[key] = (row, self.now)

  @stateful.rule(keys=_BATCH)
  def lookup(self, keys):
    rows = self.table.lookup(np.array(keys, np.int64)).numpy().tolist()
    assert rows == [self.model.get(k, (-1, 0))[0] for k in keys]
    assert _xla_lookup(keys) == rows

  @stateful.rule(keys=_BATCH)
  def remove(self, keys):
    found = self.table.remove(np.array(keys, np.int64)).numpy().tolist()
    expected = [k in self.model for k in keys]
    assert found == expected
    for key in keys:
      self.model.pop(key, None)

  @stateful.rule(age=st.integers(0, 12))
  def expire(self, age):
    cutoff = self.now - age
    expired = set(self.table.expire(cutoff).numpy().tolist())
    assert expired == {k for k, (_, s) in self.model.items() if s < cutoff}
    for key in expired:
      del self.model[key]

  @stateful.invariant()
  def matches_model(self):
    assert self.table.size().numpy() == len(self.model)
    assert _state(self.table) == self.model
    rows = [row for row, _ in self.model.values()]
    assert len(set(rows)) == len(rows), "two live keys share a row"

  @stateful.invariant()
  def empty_slots_hold_empty_keys(self):
    table = self.table
    contents = table.buckets.numpy()
    s = table.slots_per_bucket
    empty = table._empty_key_of(  # pylint: disable=protected-access
        tf.range(table.num_buckets, dtype=tf.int64)).numpy()
    slot_keys = np.where(contents[:, s:] < 0, contents[:, :s], empty[:, None])
    np.testing.assert_array_equal(slot_keys, np.repeat(empty[:, None], s, 1))


class PatchMachine(stateful.RuleBasedStateMachine):
  """A trainer layer synced to a replica by patches, against a dict."""

  def __init__(self):
    super().__init__()
    _reset()
    self.trainer, self.replica = _TRAINER, _REPLICA
    self.trainer.advance_clock(1000)
    self.model = {}

  def _now(self):
    return int(self.trainer.clock.numpy())

  @stateful.rule(keys=_BATCH, dt=st.integers(1, 8))
  def train(self, keys, dt):
    self.trainer.advance_clock(self._now() + dt)
    new = set(keys) - set(self.model)
    fits = len(self.model) + len(new) <= self.trainer.capacity
    ids = tf.constant(keys, tf.int64)
    try:
      self.trainer(ids, training=True)
    except tf.errors.InvalidArgumentError as error:
      assert "cannot place" in str(error) or not fits, str(error)
      assert _state(self.trainer.table) == self.model
      return
    assert fits, "training into a full table did not raise"
    rows = self.trainer.table.lookup(ids).numpy()
    # Stand-in for an optimizer step: the touched rows change.
    self.trainer.embeddings.scatter_nd_add(
        rows[:, None].astype(np.int64), np.ones([len(keys), 2], np.float32))
    for key, row in zip(keys, rows.tolist()):
      if key in self.model:
        assert row == self.model[key][0], "an admitted key's row moved"
      self.model[key] = (row, self._now())

  @stateful.rule(dt=st.integers(0, 30))
  def expire(self, dt):
    now = self._now() + dt
    expired = set(self.trainer.expire(now).numpy().tolist())
    assert expired == {
        k for k, (_, s) in self.model.items() if s < now - 20}
    for key in expired:
      del self.model[key]

  @stateful.rule(keys=_BATCH)
  def remove(self, keys):
    self.trainer.table.remove(np.array(keys, np.int64))
    for key in keys:
      self.model.pop(key, None)

  @stateful.rule(max_bytes=st.sampled_from([120, 400, 10**6]),
                 repeat=st.booleans())
  def sync(self, max_bytes, repeat):
    patch = self.trainer.export_patch()
    chunks = patch.to_chunks(max_bytes=max_bytes)
    received = tm.EmbeddingPatch.from_chunks(chunks[::-1])
    assert received == patch
    self.replica.apply_patch(received)
    if repeat:  # Idempotent.
      self.replica.apply_patch(received)
    live = np.array(sorted(self.model), np.int64)
    assert self.replica.table.size().numpy() == len(live)
    np.testing.assert_array_equal(self.replica(live).numpy(),
                                  self.trainer(live).numpy())

  @stateful.invariant()
  def matches_model(self):
    state = _state(self.trainer.table)
    assert {k: r for k, (r, _) in state.items()} == {
        k: r for k, (r, _) in self.model.items()}
    rows = [row for row, _ in self.model.values()]
    assert len(set(rows)) == len(rows), "two live keys share a row"


TestTable = TableMachine.TestCase
TestTable.settings = _SETTINGS
TestPatches = PatchMachine.TestCase
TestPatches.settings = _SETTINGS
