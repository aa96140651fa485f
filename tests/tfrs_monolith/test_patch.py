"""Tests for `tfrs_monolith.EmbeddingPatch`."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf

import tfrs_monolith as tm


def _patch(n=5, dim=3, evicted=(99, 100), **kwargs):
  rng = np.random.default_rng(n)
  return tm.EmbeddingPatch(
      keys=np.arange(n, dtype=np.int64) * 7 - 3,
      values=rng.normal(size=[n, dim]).astype(np.float32),
      evicted=np.array(evicted, np.int64),
      **{"model_name": "ranker", "table_name": "user", "sequence": 4,
         "created_at": 1700000000, "watermark": {"examples/0": 12}, **kwargs})


class TestSerialization:

  def test_round_trip(self):
    patch = _patch()
    restored = tm.EmbeddingPatch.deserialize(patch.serialize())
    assert restored == patch
    assert restored.watermark == {"examples/0": 12}
    assert restored.values.dtype == np.float32
    assert restored.patch_id == "ranker/user/4"

  def test_empty_patch(self):
    patch = tm.EmbeddingPatch(keys=[], values=np.zeros([0, 4]), evicted=[])
    assert tm.EmbeddingPatch.deserialize(patch.serialize()) == patch

  def test_size_is_close_to_raw_rows(self):
    patch = _patch(n=10000, dim=32, evicted=())
    raw = patch.values.nbytes
    # 8 bytes of key per row of 128 bytes, plus a small header.
    assert len(patch.serialize()) / raw <= 1.10

  @pytest.mark.parametrize("position", [0, 5, 40, -30, -1])
  def test_any_flipped_byte_is_rejected(self, position):
    data = bytearray(_patch().serialize())
    data[position] ^= 0x40
    with pytest.raises(tm.PatchError):
      tm.EmbeddingPatch.deserialize(bytes(data))

  def test_truncated_and_foreign_data(self):
    data = _patch().serialize()
    with pytest.raises(tm.PatchError, match="checksum"):
      tm.EmbeddingPatch.deserialize(data[:-10])
    with pytest.raises(tm.PatchError, match="too short"):
      tm.EmbeddingPatch.deserialize(b"TM")
    with pytest.raises(tm.PatchError, match="magic"):
      tm.EmbeddingPatch.deserialize(b"{\"json\": true}" + bytes(20))

  def test_future_version_is_rejected(self):
    data = bytearray(_patch().serialize())
    data[4] = 9
    with pytest.raises(tm.PatchError, match="version 9"):
      tm.EmbeddingPatch.deserialize(bytes(data))


class TestChunks:

  def test_chunks_fit_and_reassemble_in_any_order(self):
    patch = _patch(n=3000, dim=16)
    chunks = patch.to_chunks(max_bytes=20_000)
    assert len(chunks) > 5
    assert all(len(c) <= 20_000 for c in chunks)
    rng = np.random.default_rng(0)
    shuffled = [chunks[i] for i in rng.permutation(len(chunks))]
    assert tm.EmbeddingPatch.from_chunks(shuffled) == patch

  def test_default_chunks_fit_one_megabyte(self):
    patch = _patch(n=20000, dim=32)
    chunks = patch.to_chunks()
    assert len(chunks) == 3
    assert all(len(c) <= 1_000_000 for c in chunks)

  def test_missing_corrupt_or_mixed_chunks(self):
    chunks = _patch(n=3000, dim=16).to_chunks(max_bytes=20_000)
    with pytest.raises(tm.PatchError, match=r"missing chunks \[2\]"):
      tm.EmbeddingPatch.from_chunks(chunks[:2] + chunks[3:])
    bad = bytearray(chunks[1])
    bad[-1] ^= 1
    with pytest.raises(tm.PatchError, match="chunk 1 of .* corrupt"):
      tm.EmbeddingPatch.from_chunks([chunks[0], bytes(bad)] + chunks[2:])
    other = _patch(n=3000, dim=16, sequence=5).to_chunks(max_bytes=20_000)
    with pytest.raises(tm.PatchError, match="mixed"):
      tm.EmbeddingPatch.from_chunks([chunks[0], other[1]])
    with pytest.raises(tm.PatchError, match="no chunks"):
      tm.EmbeddingPatch.from_chunks([])

  def test_max_bytes_must_exceed_header(self):
    with pytest.raises(ValueError, match="max_bytes=10"):
      _patch().to_chunks(max_bytes=10)


class TestValidation:

  def test_values_shape(self):
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
      tm.EmbeddingPatch(keys=[1, 2, 3], values=np.zeros([3]))
    with pytest.raises(ValueError, match=r"shape \(2, 4\) for 3 keys"):
      tm.EmbeddingPatch(keys=[1, 2, 3], values=np.zeros([2, 4]))

  def test_keys_type_and_uniqueness(self):
    with pytest.raises(ValueError, match="keys.*float64"):
      tm.EmbeddingPatch(keys=[1.5], values=np.zeros([1, 2]))
    with pytest.raises(ValueError, match="keys.*shape"):
      tm.EmbeddingPatch(keys=[[1]], values=np.zeros([1, 2]))
    with pytest.raises(ValueError, match="unique.*1 duplicates"):
      tm.EmbeddingPatch(keys=[1, 1], values=np.zeros([2, 2]))

  def test_metadata(self):
    with pytest.raises(ValueError, match="sequence=-1"):
      _patch(sequence=-1)
    with pytest.raises(TypeError, match="table_name=3"):
      _patch(table_name=3)
    with pytest.raises(TypeError, match="watermark"):
      _patch(watermark=[1, 2])


def _apply_to_dict(rows, patch):
  """What `CollisionlessEmbedding.apply_patch` does, on a dict."""
  if patch.full:
    listed = set(patch.keys.tolist())
    for key in [k for k in rows if k not in listed]:
      del rows[key]
  for key in patch.evicted.tolist():
    rows.pop(key, None)
  for key, value in zip(patch.keys.tolist(), patch.values):
    rows[key] = tuple(value.tolist())


@st.composite
def _patch_runs(draw):
  runs = draw(st.lists(st.tuples(
      st.sets(st.integers(0, 12), max_size=6),      # upserted keys
      st.sets(st.integers(0, 12), max_size=3),      # evicted keys
      st.booleans()), min_size=1, max_size=8))
  patches = []
  for sequence, (keys, evicted, full) in enumerate(runs, 1):
    keys = sorted(keys)
    patches.append(tm.EmbeddingPatch(
        keys=np.array(keys, np.int64),
        values=np.full([len(keys), 2], sequence, np.float32) +
        np.array(keys, np.float32)[:, None] / 100,
        evicted=np.array(sorted(evicted), np.int64), table_name="t",
        sequence=sequence, created_at=100 + sequence,
        watermark={"examples/0": sequence}, full=full and sequence % 3 == 0))
  return patches


class TestMergePatches:

  @hypothesis.settings(max_examples=200, deadline=None)
  @hypothesis.given(_patch_runs(), st.dictionaries(
      st.integers(0, 12), st.just((0.0, 0.0)), max_size=8))
  def test_merged_patch_gives_the_same_rows(self, patches, start):
    one_by_one, merged = dict(start), dict(start)
    for patch in patches:
      _apply_to_dict(one_by_one, patch)
    result = tm.merge_patches(patches)
    _apply_to_dict(merged, result)
    assert merged == one_by_one
    assert result.sequence == patches[-1].sequence
    assert result.watermark == patches[-1].watermark
    assert result.created_at == patches[-1].created_at

  def test_merged_patch_on_a_replica_table(self):
    trainer = tm.CollisionlessEmbedding(4, capacity=64, name="t")
    one_by_one = tm.CollisionlessEmbedding(4, capacity=64, name="t")
    merged = tm.CollisionlessEmbedding(4, capacity=64, name="t")
    patches = []
    for step in range(5):
      with tm.embedding.learning():
        trainer(tf.constant(np.arange(step, step + 6, dtype=np.int64)))
      trainer.table.remove(np.array([step], np.int64))
      patches.append(trainer.export_patch())
    for patch in patches:
      one_by_one.apply_patch(patch)
    merged.apply_patch(tm.merge_patches(patches))
    keys = np.arange(12, dtype=np.int64)
    for replica in (one_by_one, merged):
      np.testing.assert_array_equal(replica.table.lookup(keys) >= 0,
                                    trainer.table.lookup(keys) >= 0)
      np.testing.assert_array_equal(
          replica(tf.constant(keys), training=False).numpy(),
          trainer(tf.constant(keys), training=False).numpy())

  def test_bad_runs_are_rejected(self):
    a, b = _patch(sequence=3), _patch(sequence=4)
    with pytest.raises(ValueError, match="at least one"):
      tm.merge_patches([])
    with pytest.raises(ValueError, match="increasing sequence"):
      tm.merge_patches([b, a])
    with pytest.raises(ValueError, match="one model and table"):
      tm.merge_patches([a, _patch(sequence=5, table_name="item")])
    with pytest.raises(ValueError, match="dimensions"):
      tm.merge_patches([a, _patch(sequence=5, dim=4)])
