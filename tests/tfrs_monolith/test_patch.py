"""Tests for `tfrs_monolith.EmbeddingPatch`."""

import numpy as np
import pytest

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
