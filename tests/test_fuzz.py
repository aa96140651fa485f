"""Fuzz tests of the decoders that read untrusted bytes.

Patches and their chunks (`EmbeddingPatch.deserialize`, `read_chunk`,
`from_chunks`), event messages (`streams.parse_impression`, `parse_action`,
`parse_example`) and the file log (`FileTransport`) get arbitrary bytes and
structure-aware mutations of valid inputs. Each call must return a valid
object or raise the module's own error (`PatchError`, `MalformedMessage`,
`IOError` for the log): no other exception, no hang, no allocation beyond
the input's size. Valid inputs must round-trip exactly.
"""
# The tests build wire formats field by field.
# pylint: disable=protected-access,unidiomatic-typecheck

import datetime
import json
import os
import struct
import tracemalloc
import zlib

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

import tfrs_monolith as tm
from tfrs_monolith import patch as patch_lib
from tfrs_monolith import streams

# Each test runs for a few seconds; no example database is written. Set
# TFRS_MONOLITH_FUZZ_EXAMPLES to fuzz longer.
EXAMPLES = int(os.environ.get("TFRS_MONOLITH_FUZZ_EXAMPLES", "400"))
FUZZ = hypothesis.settings(
    max_examples=EXAMPLES, deadline=datetime.timedelta(seconds=5),
    database=None, derandomize=False,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large])
FEW = hypothesis.settings(FUZZ, max_examples=max(1, EXAMPLES // 4))

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
# JSON values of every type, including numbers JSON cannot carry exactly.
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.text(st.characters(codec=None, categories=["Cs", "Lu"]), max_size=4))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4)),
    max_leaves=12)


def _dumps(value) -> bytes:
  """JSON bytes of `value`, as a sloppy producer writes them (NaN, lone
  surrogates escaped)."""
  return json.dumps(value).encode("utf-8")


@st.composite
def mutations(draw, data: bytes, max_ops: int = 4) -> bytes:
  """`data` with a few truncations, bit flips, insertions, deletions or
  overwrites."""
  data = bytearray(data)
  for _ in range(draw(st.integers(1, max_ops))):
    op = draw(st.sampled_from(
        ["truncate", "flip", "insert", "delete", "overwrite"]))
    at = draw(st.integers(0, len(data)))
    if op == "truncate":
      del data[at:]
    elif op == "insert":
      data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif not data or at == len(data):
      continue
    elif op == "flip":
      data[at] ^= 1 << draw(st.integers(0, 7))
    elif op == "delete":
      del data[at:draw(st.integers(at, len(data)))]
    else:
      piece = draw(st.binary(min_size=1, max_size=8))
      data[at:at + len(piece)] = piece
  return bytes(data)


# ------------------------------------------------------------------ patches


@st.composite
def patches(draw, max_keys: int = 6) -> tm.EmbeddingPatch:
  n = draw(st.integers(0, max_keys))
  dim = draw(st.integers(0 if n == 0 else 1, 4))
  keys = draw(st.lists(INT64, min_size=n, max_size=n, unique=True))
  values = draw(st.lists(st.floats(width=32, allow_nan=False),
                         min_size=n * dim, max_size=n * dim))
  return tm.EmbeddingPatch(
      keys=np.array(keys, np.int64),
      values=np.array(values, np.float32).reshape([n, dim]),
      evicted=np.array(draw(st.lists(INT64, max_size=4)), np.int64),
      model_name=draw(st.text(max_size=8)),
      table_name=draw(st.text(max_size=8)),
      sequence=draw(st.integers(0, 1 << 40)),
      created_at=draw(st.integers(0, 1 << 40)),
      watermark=draw(st.dictionaries(st.text(max_size=8), INT64,
                                     max_size=3)),
      full=draw(st.booleans()))


def _with_crc(body: bytes) -> bytes:
  return body + struct.pack("<I", zlib.crc32(body))


def _check_patch(patch):
  """`patch` is a whole, valid patch: typed fields, and it round-trips."""
  assert isinstance(patch, tm.EmbeddingPatch)
  assert patch.keys.dtype == np.int64 and patch.keys.ndim == 1
  assert patch.evicted.dtype == np.int64 and patch.evicted.ndim == 1
  assert patch.values.dtype == np.float32
  assert patch.values.shape == (len(patch.keys), patch.dim)
  assert len(np.unique(patch.keys)) == len(patch.keys)
  assert isinstance(patch.model_name, str)
  assert isinstance(patch.table_name, str)
  assert type(patch.sequence) is int and patch.sequence >= 0
  assert type(patch.created_at) is int and patch.created_at >= 0
  assert all(isinstance(k, str) and type(v) is int
             for k, v in patch.watermark.items())
  assert isinstance(patch.full, bool)
  data = patch.serialize()
  assert tm.EmbeddingPatch.deserialize(data).serialize() == data


def _decoded_or_none(decode, data):
  """`decode(data)` checked, or None if it raised the clean error."""
  try:
    patch = decode(data)
  except tm.PatchError:
    return None
  _check_patch(patch)
  return patch


def _deserialize_or_error(data):
  return _decoded_or_none(tm.EmbeddingPatch.deserialize, data)


def _patch_bytes(header, arrays: bytes) -> bytes:
  """A serialized patch with the JSON `header` (any value) and a valid CRC."""
  text = header if isinstance(header, bytes) else _dumps(header)
  prefix = patch_lib._PATCH_PREFIX.pack(
      patch_lib._PATCH_MAGIC, patch_lib.FORMAT_VERSION, 0, len(text))
  return _with_crc(prefix + text + arrays)


def _arrays(patch) -> bytes:
  return (patch.keys.astype("<i8").tobytes() +
          patch.values.astype("<f4").tobytes() +
          patch.evicted.astype("<i8").tobytes())


class TestPatchFuzz:

  @FUZZ
  @hypothesis.given(patches())
  def test_valid_patches_round_trip(self, patch):
    data = patch.serialize()
    restored = tm.EmbeddingPatch.deserialize(data)
    assert restored == patch and restored.serialize() == data
    assert restored.watermark == patch.watermark
    _check_patch(restored)

  @FUZZ
  @hypothesis.given(st.binary(max_size=200))
  def test_arbitrary_bytes(self, data):
    _deserialize_or_error(data)
    _deserialize_or_error(b"TMPT\x01\x00" + data)
    _deserialize_or_error(b"TMPS\x01\x00" + data)    # A signed envelope.

  @FUZZ
  @hypothesis.given(st.data(), patches(), st.booleans())
  def test_mutated_patches(self, data, patch, fix_crc):
    mutated = data.draw(mutations(patch.serialize()))
    if fix_crc and len(mutated) > 4:   # Get past the checksum.
      mutated = _with_crc(mutated[:-4])
    _deserialize_or_error(mutated)

  @FUZZ
  @hypothesis.given(patches(), st.data())
  def test_header_fields_of_any_type(self, patch, data):
    header = dict(patch._header())
    for _ in range(data.draw(st.integers(1, 3))):
      name = data.draw(st.sampled_from(sorted(header) + ["extra"]))
      if data.draw(st.booleans()):
        header[name] = data.draw(JSON_VALUES)
      else:
        header.pop(name, None)
    _deserialize_or_error(_patch_bytes(header, _arrays(patch)))

  @FUZZ
  @hypothesis.given(patches(), JSON_VALUES)
  def test_header_of_any_json(self, patch, header):
    _deserialize_or_error(_patch_bytes(header, _arrays(patch)))

  @FUZZ
  @hypothesis.given(
      patches(), st.integers(-(1 << 66), 1 << 66),
      st.one_of(st.integers(-8, 8), st.integers(-(1 << 66), 1 << 66)))
  def test_lying_sizes_that_add_up(self, patch, n, dim):
    # `num_keys`, `dim` and `num_evicted` chosen so that the length check
    # passes: negative or huge counts must still be refused.
    header = dict(patch._header(), num_keys=n, dim=dim)
    arrays = _arrays(patch)
    rest = len(arrays) - 8 * n - 4 * n * dim
    hypothesis.assume(rest % 8 == 0)
    header["num_evicted"] = rest // 8
    _deserialize_or_error(_patch_bytes(header, arrays))

  @pytest.mark.parametrize("fields", [
      {"num_keys": -1, "dim": -2, "num_evicted": 0},
      {"num_keys": 1 << 40, "dim": -2, "num_evicted": 0},
      {"num_keys": 1.0, "dim": 3, "num_evicted": 2},
      {"num_keys": True, "dim": 3, "num_evicted": 2},
      {"watermark": {"examples/0": float("inf")}},
      {"watermark": {"examples/0": 1.5}},
      {"watermark": {"examples/0": "12"}},
      {"full": "no"},
      {"dtype": "float64"},
  ])
  def test_bad_header_fields_are_patch_errors(self, fields):
    patch = tm.EmbeddingPatch(keys=[5], values=[[1.0, 2.0, 3.0]],
                              evicted=[7, 8], watermark={"examples/0": 1})
    header = dict(patch._header(), **fields)
    data = _patch_bytes(header, _arrays(patch))
    name = sorted(fields)[0]
    with pytest.raises(tm.PatchError, match=name):
      tm.EmbeddingPatch.deserialize(data)

  @pytest.mark.parametrize("dim", [patch_lib.MAX_PATCH_DIM + 1, 1 << 61])
  def test_too_wide_dim_is_a_patch_error(self, dim):
    # No keys: the length check passes whatever `dim` says.
    patch = tm.EmbeddingPatch(keys=[], values=np.zeros([0, 4], np.float32))
    header = dict(patch._header(), dim=dim)
    with pytest.raises(tm.PatchError, match=f"`dim` must be at most .*{dim}"):
      tm.EmbeddingPatch.deserialize(_patch_bytes(header, _arrays(patch)))

  def test_too_wide_values_are_refused_when_made(self):
    dim = patch_lib.MAX_PATCH_DIM + 1
    with pytest.raises(ValueError, match=f"at most .* wide.*dim={dim}"):
      tm.EmbeddingPatch(keys=[], values=np.zeros([0, dim], np.float32))

  def test_deeply_nested_header_is_a_patch_error(self):
    with pytest.raises(tm.PatchError, match="header: nested too deeply"):
      tm.EmbeddingPatch.deserialize(_patch_bytes(b"[" * 100_000, b""))


def _chunk(index, count, total, crc, patch_id: bytes, piece: bytes,
           piece_crc=None):
  return patch_lib._CHUNK_PREFIX.pack(
      patch_lib._CHUNK_MAGIC, patch_lib.FORMAT_VERSION, 0, index, count,
      total, crc, zlib.crc32(piece) if piece_crc is None else piece_crc,
      len(patch_id)) + patch_id + piece


def _unpack_chunk(chunk):
  fields = patch_lib._CHUNK_PREFIX.unpack_from(chunk)
  start = patch_lib._CHUNK_PREFIX.size + fields[-1]
  return fields, chunk[patch_lib._CHUNK_PREFIX.size:start], chunk[start:]


_UINT32 = st.one_of(st.integers(0, 8), st.integers(0, (1 << 32) - 1))
# Chunk header fields to replace, with values in their fields' ranges.
LIES = st.fixed_dictionaries({}, optional={
    "index": _UINT32, "count": _UINT32, "crc": _UINT32,
    "total": st.one_of(st.integers(0, 64), st.integers(0, (1 << 64) - 1)),
    "patch_id": st.binary(max_size=8), "piece": st.binary(max_size=64)})


@st.composite
def chunked(draw):
  """A patch and its chunks, cut small."""
  patch = draw(patches())
  overhead = patch_lib._CHUNK_PREFIX.size + len(
      patch.patch_id.encode("utf-8"))
  chunks = patch.to_chunks(max_bytes=overhead + draw(st.integers(1, 64)))
  return patch, chunks


def _from_chunks_or_error(chunks):
  return _decoded_or_none(tm.EmbeddingPatch.from_chunks, chunks)


def _read_chunk_or_error(chunk):
  try:
    patch_id, index, count, total, crc, piece = (
        tm.EmbeddingPatch.read_chunk(chunk))
  except tm.PatchError:
    return
  assert isinstance(patch_id, str)
  assert 0 <= index < count <= max(total, 1)
  assert isinstance(crc, int) and isinstance(piece, bytes)


class TestChunkFuzz:

  @FUZZ
  @hypothesis.given(chunked(), st.randoms(use_true_random=False),
                    st.integers(0, 3))
  def test_chunks_in_any_order_with_repeats_round_trip(self, chunked_patch,
                                                       rng, repeats):
    patch, chunks = chunked_patch
    chunks = chunks + [rng.choice(chunks) for _ in range(repeats)]
    rng.shuffle(chunks)
    assert tm.EmbeddingPatch.from_chunks(chunks) == patch

  @FUZZ
  @hypothesis.given(st.binary(max_size=120))
  def test_arbitrary_chunk_bytes(self, data):
    _read_chunk_or_error(data)
    _read_chunk_or_error(b"TMPC\x01\x00" + data)
    _from_chunks_or_error([data])

  @FUZZ
  @hypothesis.given(chunked(), st.data(), st.booleans())
  def test_mutated_chunk(self, chunked_patch, data, fix_piece_crc):
    _, chunks = chunked_patch
    i = data.draw(st.integers(0, len(chunks) - 1))
    mutated = data.draw(mutations(chunks[i]))
    if fix_piece_crc and len(mutated) >= patch_lib._CHUNK_PREFIX.size:
      fields, patch_id, piece = _unpack_chunk(mutated)
      mutated = _chunk(*fields[3:7], patch_id, piece)
    _read_chunk_or_error(mutated)
    _from_chunks_or_error(chunks[:i] + [mutated] + chunks[i + 1:])

  @FUZZ
  @hypothesis.given(chunked(), st.lists(st.tuples(st.integers(0), LIES),
                                        min_size=1, max_size=4))
  def test_lying_chunk_headers(self, chunked_patch, lies):
    _, chunks = chunked_patch
    chunks = list(chunks)
    for at, lie in lies:
      at %= len(chunks)
      (_, _, _, index, count, total, crc, _, _), patch_id, piece = (
          _unpack_chunk(chunks[at]))
      fields = dict(index=index, count=count, total=total, crc=crc,
                    patch_id=patch_id, piece=piece)
      fields.update(lie)
      chunks[at] = _chunk(**fields)
    _from_chunks_or_error(chunks)

  @FUZZ
  @hypothesis.given(chunked(), chunked(), st.randoms(use_true_random=False))
  def test_mixed_dropped_and_duplicated_chunks(self, first, second, rng):
    chunks = list(first[1])
    for _ in range(rng.randint(1, 3)):
      op = rng.choice(["drop", "duplicate", "foreign"])
      if op == "drop" and chunks:
        chunks.pop(rng.randrange(len(chunks)))
      elif op == "duplicate" and chunks:
        chunks.append(rng.choice(chunks))
      else:
        chunks.insert(rng.randrange(len(chunks) + 1), rng.choice(second[1]))
    patch = _from_chunks_or_error(chunks)
    assert patch is None or patch in (first[0], second[0])

  def test_huge_chunk_count_is_refused_quickly(self):
    piece = b"x" * 10
    chunk = _chunk(0, (1 << 32) - 1, 10, zlib.crc32(piece), b"m/t/1", piece)
    with pytest.raises(tm.PatchError, match="count"):
      tm.EmbeddingPatch.read_chunk(chunk)
    with pytest.raises(tm.PatchError, match="count"):
      tm.EmbeddingPatch.from_chunks([chunk])

  def test_missing_chunks_are_listed_briefly(self):
    data = bytes(range(200)) * 50
    pieces = [data[i:i + 10] for i in range(0, len(data), 10)]
    chunks = [_chunk(i, len(pieces), len(data), zlib.crc32(data), b"m/t/1",
                     p) for i, p in enumerate(pieces)]
    with pytest.raises(tm.PatchError,
                       match=r"missing chunks \[0, 1, 2, .*, 9\] and 989 "
                       "more"):
      tm.EmbeddingPatch.from_chunks(chunks[-1:])

  def test_chunk_id_past_the_end_is_refused(self):
    chunk = _chunk(0, 1, 5, 0, b"", b"")
    chunk = chunk[:-2] + struct.pack("<H", 500)
    with pytest.raises(tm.PatchError, match="id"):
      tm.EmbeddingPatch.read_chunk(chunk)

  def test_pieces_beyond_the_total_are_refused(self):
    piece = b"y" * 100
    chunks = [_chunk(i, 3, 12, 0, b"p", piece) for i in (0, 1)]
    with pytest.raises(tm.PatchError, match="more than"):
      tm.EmbeddingPatch.from_chunks(chunks)


# ------------------------------------------------------------------- events

ID_FIELDS = ("request_id", "user_id", "item_id", "action")


def _check_event(event, kind):
  """`event` is what the parser promises for a valid message."""
  assert isinstance(event, dict)
  required = (("request_id", "user_id", "item_id", "event_time", "features")
              if kind == "impression" else
              ("request_id", "item_id", "action", "event_time"))
  assert set(required) <= set(event)
  for name in ID_FIELDS:
    if name not in event:
      continue
    value = event[name]
    assert not isinstance(value, bool)
    if isinstance(value, str):
      assert value and len(value.encode("utf-8")) <= streams.MAX_ID_BYTES
    else:
      assert name in ("user_id", "item_id") and isinstance(value, int)
      assert -(1 << 63) <= value < (1 << 63)
  assert isinstance(event["request_id"], str)
  assert type(event["event_time"]) is float
  assert 0 <= event["event_time"] < streams.MAX_EVENT_TIME
  if kind == "impression":
    assert isinstance(event["features"], dict)
    # All text is Unicode: it can become UTF-8 bytes downstream.
    json.dumps(event["features"], ensure_ascii=False).encode("utf-8")


PARSERS = {"impression": streams.parse_impression,
           "action": streams.parse_action}


def _parse_or_error(kind, value):
  try:
    event = PARSERS[kind](value)
  except streams.MalformedMessage as error:
    assert str(error).split(":", 1)[0] in (
        "not JSON", "bad event", "bad field", "missing field",
        "oversize event")
    return None
  _check_event(event, kind)
  return event


ids = st.one_of(INT64, st.text(min_size=1, max_size=20))


@st.composite
def events(draw, kind):
  event = {"request_id": draw(st.text(min_size=1, max_size=20)),
           "item_id": draw(ids),
           "event_time": draw(st.one_of(
               st.integers(0, 4_000_000_000),
               st.floats(0, 4e9, allow_nan=False)))}
  if kind == "impression":
    event["user_id"] = draw(ids)
    event["features"] = draw(st.dictionaries(
        st.text(max_size=6),
        st.one_of(st.integers(-1000, 1000), st.text(max_size=6),
                  st.lists(st.floats(-1, 1), max_size=3)),
        max_size=3))
  else:
    event["action"] = draw(st.text(min_size=1, max_size=10))
    if draw(st.booleans()):
      event["user_id"] = draw(ids)
  return event


class TestEventFuzz:

  @FUZZ
  @hypothesis.given(st.sampled_from(sorted(PARSERS)), st.data())
  def test_valid_events_round_trip(self, kind, data):
    event = data.draw(events(kind))
    parsed = PARSERS[kind](streams.encode_event(event))
    assert parsed == {**event, "event_time": float(event["event_time"])}
    _check_event(parsed, kind)

  @FUZZ
  @hypothesis.given(st.sampled_from(sorted(PARSERS)),
                    st.one_of(st.binary(max_size=200),
                              st.text(max_size=100)))
  def test_arbitrary_messages(self, kind, value):
    _parse_or_error(kind, value)

  @FUZZ
  @hypothesis.given(st.sampled_from(sorted(PARSERS)), st.data())
  def test_fields_of_any_type(self, kind, data):
    event = data.draw(events(kind))
    for _ in range(data.draw(st.integers(1, 3))):
      name = data.draw(st.sampled_from(sorted(event) + ["user_id", "x"]))
      if data.draw(st.booleans()):
        event[name] = data.draw(JSON_VALUES)
      else:
        event.pop(name, None)
    _parse_or_error(kind, _dumps(event))

  @FUZZ
  @hypothesis.given(st.sampled_from(sorted(PARSERS)), st.data())
  def test_mutated_messages(self, kind, data):
    value = data.draw(mutations(streams.encode_event(data.draw(events(kind)))))
    _parse_or_error(kind, value)

  @FUZZ
  @hypothesis.given(st.sampled_from(sorted(PARSERS)), JSON_VALUES)
  def test_any_json(self, kind, value):
    _parse_or_error(kind, _dumps(value))

  @pytest.mark.parametrize("kind", sorted(PARSERS))
  @pytest.mark.parametrize("value, message", [
      (b"[" * 60_000, "not JSON: nested too deeply"),
      (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "not JSON: nested too"),
      (b"\xff\xfe{\x00}\x00", "not JSON: not UTF-8"),
      (b'{"request_id": "\\ud800"}', "not Unicode text"),
      ("\ud800", "not JSON: not UTF-8"),
      (None, "no value: the .* message is a tombstone"),
      (12, "not JSON: .* must be bytes, got int"),
      (b"1" * 5000, "not JSON"),
  ])
  def test_hostile_messages(self, kind, value, message):
    with pytest.raises(streams.MalformedMessage, match=message):
      PARSERS[kind](value)

  @pytest.mark.parametrize("event_time, message", [
      (10**400, "before year 10000"),
      (1e300, "before year 10000"),
      (float("nan"), "finite number of seconds >= 0, got nan"),
      (-(10**400), "finite number of seconds >= 0"),
  ])
  def test_event_time_out_of_range(self, event_time, message):
    value = _dumps({"request_id": "r", "item_id": 1, "action": "click",
                    "event_time": event_time})
    with pytest.raises(streams.MalformedMessage, match=message):
      streams.parse_action(value)

  def test_bad_values_are_quoted_briefly(self):
    value = _dumps({"request_id": "r", "user_id": [[[[[1]]]]] * 1000,
                    "item_id": 1, "event_time": 1})
    with pytest.raises(streams.MalformedMessage) as raised:
      streams.parse_impression(value)
    assert len(str(raised.value)) < 200


class TestEventLimits:

  def _impression(self, **fields):
    return {"request_id": "r1", "user_id": 7, "item_id": "m9",
            "event_time": 1700000000, **fields}

  @pytest.mark.parametrize("kind", sorted(PARSERS))
  def test_oversize_messages_are_refused_before_parsing(self, kind):
    value = b"{" * (streams.MAX_EVENT_BYTES + 1)     # Not JSON either.
    with pytest.raises(streams.MalformedMessage,
                       match="^oversize event: .* is 65537 bytes, the limit "
                       "is 65536$"):
      PARSERS[kind](value)

  def test_size_limit_is_inclusive_and_adjustable(self):
    event = self._impression(features={"pad": ""})
    size = len(streams.encode_event(event))
    event["features"]["pad"] = "x" * (streams.MAX_EVENT_BYTES - size)
    value = streams.encode_event(event)
    assert len(value) == streams.MAX_EVENT_BYTES
    assert streams.parse_impression(value)["request_id"] == "r1"
    with pytest.raises(streams.MalformedMessage, match="oversize event"):
      streams.parse_impression(value, max_bytes=len(value) - 1)
    with pytest.raises(streams.MalformedMessage, match="oversize event"):
      streams.parse_impression(memoryview(value + b" "))

  @pytest.mark.parametrize("name", ["request_id", "user_id", "item_id"])
  def test_long_string_ids(self, name):
    ok = streams.encode_event(self._impression(**{name: "a" * 256}))
    assert streams.parse_impression(ok)[name] == "a" * 256
    for long_id, size in (("a" * 257, 257), ("\u00e9" * 129, 258)):
      value = streams.encode_event(self._impression(**{name: long_id}))
      with pytest.raises(streams.MalformedMessage,
                         match=f"^bad field: impression '{name}' is {size} "
                         "bytes, the limit is 256$"):
        streams.parse_impression(value)
    assert streams.parse_impression(ok, max_id_bytes=300)[name] == "a" * 256
    with pytest.raises(streams.MalformedMessage, match="limit is 100"):
      streams.parse_impression(ok, max_id_bytes=100)

  def test_long_action(self):
    value = streams.encode_event({"request_id": "r", "item_id": 1,
                                  "event_time": 5, "action": "c" * 300})
    with pytest.raises(streams.MalformedMessage,
                       match="'action' is 300 bytes, the limit is 256"):
      streams.parse_action(value)

  @pytest.mark.parametrize("name", ["user_id", "item_id"])
  def test_integer_ids_must_fit_in_int64(self, name):
    for good in (-(1 << 63), (1 << 63) - 1):
      value = streams.encode_event(self._impression(**{name: good}))
      assert streams.parse_impression(value)[name] == good
    for bad in (-(1 << 63) - 1, 1 << 63, 10**100):
      value = streams.encode_event(self._impression(**{name: bad}))
      with pytest.raises(streams.MalformedMessage,
                         match=f"bad field: impression '{name}' must fit in "
                         "int64"):
        streams.parse_impression(value)

  @pytest.mark.parametrize("arg", ["max_bytes", "max_id_bytes"])
  @pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
  def test_bad_limits(self, arg, bad):
    value = streams.encode_event(self._impression())
    with pytest.raises(ValueError, match=f"`{arg}` must be a positive "
                       f"integer. Received: {arg}={bad!r}"):
      streams.parse_impression(value, **{arg: bad})

  def test_dead_letters_count_oversize_events(self, tmp_path):
    transport = streams.FileTransport(str(tmp_path))
    with transport.producer() as producer:
      dead = streams.DeadLetterQueue(producer, "dlq")
      for value in (b" " * 70_000,
                    streams.encode_event(self._impression(item_id="i" * 999))):
        try:
          streams.parse_impression(value)
        except streams.MalformedMessage as error:
          dead.send(streams.Record("impressions", 0, 0, None, value, 0),
                    str(error))
    assert dead.counts == {"oversize event": 1, "bad field": 1}

  def test_oversize_examples(self):
    import online_model  # pylint: disable=g-import-not-at-top
    value = online_model.example(1, 2, 0.5, 10)
    assert streams.parse_example(value, max_bytes=len(value)).features
    with pytest.raises(streams.MalformedMessage,
                       match=f"^oversize example: message is {len(value)} "
                       f"bytes, the limit is {len(value) - 1}$"):
      streams.parse_example(value, max_bytes=len(value) - 1)
    with pytest.raises(streams.MalformedMessage, match="oversize example"):
      streams.parse_example(b"\xff" * ((1 << 20) + 1))
    with pytest.raises(streams.MalformedMessage, match="must be bytes"):
      streams.parse_example(12)

  def test_tombstones(self):
    # A Kafka message with no value (a tombstone, which any producer can
    # write) is refused by every parser and dead-lettered with a null value.
    for parse in (streams.parse_impression, streams.parse_action,
                  streams.parse_example):
      with pytest.raises(streams.MalformedMessage,
                         match="^no value: the .* message is a tombstone$"):
        parse(None)
    with pytest.raises(patch_lib.PatchError, match="tombstone"):
      tm.EmbeddingPatch.read_chunk(None)
    letter = streams.DeadLetterQueue.decode(streams.dead_letter(
        streams.Record("examples", 0, 3, b"k", None, 0), "no value: x"))
    assert (letter["offset"], letter["key"], letter["value"],
            letter["reason"]) == (3, b"k", None, "no value: x")


def _example_bytes():
  import online_model  # pylint: disable=g-import-not-at-top
  return online_model.example(1, 2, 0.5, 10)


class TestExampleFuzz:

  @FUZZ
  @hypothesis.given(st.binary(max_size=200))
  def test_arbitrary_bytes(self, value):
    try:
      example = streams.parse_example(value, ["user_id"])
    except streams.MalformedMessage:
      return
    assert example.features.feature["user_id"].WhichOneof("kind")

  @FUZZ
  @hypothesis.given(st.data())
  def test_mutated_examples(self, data):
    value = data.draw(mutations(_example_bytes()))
    try:
      example = streams.parse_example(value)
    except streams.MalformedMessage:
      return
    # What parses re-serializes and parses again to the same example.
    again = streams.parse_example(example.SerializeToString())
    assert again == example

  def test_valid_example_round_trips(self):
    value = _example_bytes()
    example = streams.parse_example(value)
    # (Map fields serialize in no fixed order: compare messages.)
    assert streams.parse_example(example.SerializeToString()) == example
    assert example.features.feature["user_id"].WhichOneof("kind")


# ------------------------------------------------------------------ file log


def _write_log(root, records):
  transport = streams.FileTransport(str(root))
  with transport.producer() as producer:
    for key, value in records:
      producer.send("t", value, key=key)
  return transport, os.path.join(str(root), "t.log")


def _read_all(transport, max_polls=50):
  """Polls until nothing more comes; returns the records and the error."""
  got = []
  with transport.consumer(["t"], "g") as consumer:
    try:
      for _ in range(max_polls):
        batch = consumer.poll(3, timeout=0)
        if not batch:
          break
        got.extend(batch)
    except OSError as error:
      return got, error
  return got, None


def _read_all_traced(transport):
  """`_read_all` and the peak of the memory it allocated (bytes)."""
  tracemalloc.start()
  try:
    got, error = _read_all(transport)
    return got, error, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


LOG_RECORDS = st.lists(
    st.tuples(st.one_of(st.none(), st.binary(max_size=8)),
              st.binary(max_size=40)), min_size=1, max_size=6)


class TestFileLogFuzz:

  @FEW
  @hypothesis.given(LOG_RECORDS, st.data())
  def test_corrupt_logs(self, tmp_path_factory, records, data):
    root = tmp_path_factory.mktemp("log")
    transport, path = _write_log(root, records)
    with open(path, "rb") as f:
      log = f.read()
    mutated = data.draw(mutations(log))
    if data.draw(st.booleans()):      # A frame header with a huge length.
      at = data.draw(st.sampled_from(_frame_starts(log)))
      frame = bytearray(mutated[at:at + streams._FRAME.size])
      if len(frame) == streams._FRAME.size:
        fields = list(streams._FRAME.unpack(frame))
        fields[data.draw(st.sampled_from([3, 4]))] = data.draw(
            st.sampled_from([0x7FFFFFFF, 0x7FFFFFF0]))
        mutated = (mutated[:at] + streams._FRAME.pack(*fields) +
                   mutated[at + streams._FRAME.size:])
    with open(path, "wb") as f:
      f.write(mutated)
    got, error, peak = _read_all_traced(transport)
    # Reading allocates about the file's size and a read buffer, never
    # what a corrupt length claims.
    assert peak < 8 * len(mutated) + (4 << 20)
    assert error is None or "corrupt record" in str(error)
    # Every record read is the one written at its offset, bit for bit.
    for record in got:
      assert (record.key, record.value) == records[record.offset]

  def test_huge_length_waits_without_allocating_it(self, tmp_path):
    transport, path = _write_log(tmp_path, [(None, b"hello"), (b"k", b"x")])
    with open(path, "r+b") as f:
      log = bytearray(f.read())
      at = _frame_starts(bytes(log))[1]
      fields = list(streams._FRAME.unpack_from(log, at))
      fields[4] = 0xFFFFFFF0                           # value length
      streams._FRAME.pack_into(log, at, *fields)
      f.seek(0)
      f.write(log)
    got, error, peak = _read_all_traced(transport)
    # Like a record still being written: the reader stops before it.
    assert [r.value for r in got] == [b"hello"] and error is None
    assert peak < 16 << 20

  @pytest.mark.parametrize("field, value", [(0, b"XXXX"), (3, -7)])
  def test_bad_frame_header_is_corruption(self, tmp_path, field, value):
    transport, path = _write_log(tmp_path, [(None, b"a"), (None, b"b")])
    with open(path, "r+b") as f:
      log = bytearray(f.read())
      at = _frame_starts(bytes(log))[1]
      fields = list(streams._FRAME.unpack_from(log, at))
      fields[field] = value
      streams._FRAME.pack_into(log, at, *fields)
      f.seek(0)
      f.write(log)
    got, error = _read_all(transport)
    assert [r.value for r in got] == [b"a"]
    assert "corrupt record at offset 1" in str(error)


  def test_valid_frame_out_of_place_is_corruption(self, tmp_path):
    # Bytes lost before a valid frame: it is read at another position.
    transport, path = _write_log(tmp_path, [(None, b""), (None, b"b")])
    with open(path, "r+b") as f:
      log = f.read()
      f.seek(0)
      f.write(log[_frame_starts(log)[1]:])
      f.truncate()
    got, error = _read_all(transport)
    assert got == [] and "corrupt record at offset 0" in str(error)

  def test_other_key_value_split_is_corruption(self, tmp_path):
    # The same body bytes read as key b"ab" and value b"" instead of no key
    # and value b"ab".
    transport, path = _write_log(tmp_path, [(None, b"ab")])
    with open(path, "r+b") as f:
      log = bytearray(f.read())
      fields = list(streams._FRAME.unpack_from(log, 0))
      fields[3:5] = [2, 0]
      streams._FRAME.pack_into(log, 0, *fields)
      f.seek(0)
      f.write(log)
    got, error = _read_all(transport)
    assert got == [] and "corrupt record at offset 0" in str(error)


def _frame_starts(log: bytes):
  """Byte positions of the frames of a valid log."""
  starts, at = [], 0
  while at + streams._FRAME.size <= len(log):
    starts.append(at)
    _, _, _, key_len, value_len = streams._FRAME.unpack_from(log, at)
    at += streams._FRAME.size + max(key_len, 0) + value_len
  return starts
