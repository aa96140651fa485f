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
"""Implements `EmbeddingPatch`, the unit of minute-level embedding sync."""

import dataclasses
import json
import struct
import zlib
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

__all__ = ["EmbeddingPatch", "PatchError", "FORMAT_VERSION", "merge_patches",
           "DEFAULT_CHUNK_BYTES"]

FORMAT_VERSION = 1
# Kafka's default message limit is 1 MiB including record overhead.
DEFAULT_CHUNK_BYTES = 1_000_000

_PATCH_MAGIC = b"TMPT"
_CHUNK_MAGIC = b"TMPC"
# magic, format version, flags, header length
_PATCH_PREFIX = struct.Struct("<4sHHI")
# magic, format version, flags, index, count, total length, patch crc,
# payload crc, id length
_CHUNK_PREFIX = struct.Struct("<4sHHIIQIIH")
_CRC = struct.Struct("<I")


class PatchError(ValueError):
  """A patch or chunk that cannot be decoded: corrupt, truncated or foreign."""


def _as_keys(name, value):
  array = np.asarray(value)
  if array.size == 0:
    array = array.astype(np.int64)
  if array.ndim != 1 or array.dtype.kind not in ("i", "u"):
    raise ValueError(f"`{name}` must be a 1-D array of int64 keys. Received: "
                     f"{name} with shape {array.shape} and dtype "
                     f"{array.dtype}")
  return array.astype(np.int64, copy=False)


@dataclasses.dataclass(eq=False)
class EmbeddingPatch:
  """The rows of one embedding table that changed, and the keys it dropped.

  A patch is what the trainer publishes every `sparse_interval`: the keys and
  values of the rows touched since the previous patch, and the keys evicted
  since then. Applying it to a replica table (`CollisionlessEmbedding.
  apply_patch`) first removes `evicted`, then upserts `keys` with `values`;
  this is idempotent, and applying a table's patches in `sequence` order
  makes a replica's rows equal to the trainer's for every key they name.

  When `full` is true, the patch is a snapshot: `keys` are every live key
  and a replica drops all keys not listed.

  On the wire a patch is versioned and checksummed (CRC-32 over everything),
  and `to_chunks` splits it into messages of at most `max_bytes` (1 MB by
  default, to fit a Kafka message) that `from_chunks` puts back together.

  Example:

  ```python
  patch = layer.export_patch()
  for chunk in patch.to_chunks():
    producer.send("patches", chunk)
  ...
  replica.apply_patch(tm.EmbeddingPatch.from_chunks(received))
  ```

  Attributes:
    keys: int64 `[n]` keys of the touched rows (unique).
    values: float32 `[n, dim]` their embeddings.
    evicted: int64 `[e]` keys removed from the table.
    model_name: the model the table belongs to.
    table_name: the table (layer) name.
    sequence: per-table sequence number, from 1.
    created_at: event time (seconds) of the table clock at export.
    watermark: the input positions the patch reflects, e.g.
      `{"examples/0": 1234}`.
    full: whether this is a full snapshot.
  """

  keys: np.ndarray
  values: np.ndarray
  evicted: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros([0], np.int64))
  model_name: str = ""
  table_name: str = ""
  sequence: int = 0
  created_at: int = 0
  watermark: Dict[str, int] = dataclasses.field(default_factory=dict)
  full: bool = False

  def __post_init__(self):
    self.keys = _as_keys("keys", self.keys)
    self.evicted = _as_keys("evicted", self.evicted)
    values = np.asarray(self.values, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != self.keys.shape[0]:
      raise ValueError(
          "`values` must have shape [len(keys), dim]. Received: values with "
          f"shape {values.shape} for {self.keys.shape[0]} keys")
    self.values = values
    if len(np.unique(self.keys)) != len(self.keys):
      raise ValueError("`keys` must be unique within a patch. Received "
                       f"{len(self.keys) - len(np.unique(self.keys))} "
                       "duplicates")
    for name in ("model_name", "table_name"):
      if not isinstance(getattr(self, name), str):
        raise TypeError(f"`{name}` must be a string. Received: "
                        f"{name}={getattr(self, name)!r}")
    for name in ("sequence", "created_at"):
      value = getattr(self, name)
      if isinstance(value, (bool, float)) or not isinstance(
          value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer. "
                         f"Received: {name}={value!r}")
      setattr(self, name, int(value))
    if not isinstance(self.watermark, Mapping):
      raise TypeError("`watermark` must be a mapping of input position name "
                      f"to offset. Received: watermark={self.watermark!r}")
    self.watermark = {str(k): int(v) for k, v in self.watermark.items()}
    self.full = bool(self.full)

  @property
  def dim(self) -> int:
    return int(self.values.shape[1])

  def __len__(self) -> int:
    return int(self.keys.shape[0])

  def __eq__(self, other) -> bool:
    if not isinstance(other, EmbeddingPatch):
      return NotImplemented
    return (self._header() == other._header() and
            np.array_equal(self.keys, other.keys) and
            np.array_equal(self.values, other.values) and
            np.array_equal(self.evicted, other.evicted))

  # ------------------------------------------------------------ serialization

  def _header(self) -> dict:
    return {
        "model_name": self.model_name,
        "table_name": self.table_name,
        "sequence": self.sequence,
        "created_at": self.created_at,
        "watermark": self.watermark,
        "full": self.full,
        "dim": self.dim,
        "dtype": "float32",
        "num_keys": len(self),
        "num_evicted": int(self.evicted.shape[0]),
    }

  def serialize(self) -> bytes:
    """Encodes the patch: prefix, JSON header, arrays (little endian), CRC."""
    header = json.dumps(self._header(), sort_keys=True).encode("utf-8")
    body = b"".join([
        _PATCH_PREFIX.pack(_PATCH_MAGIC, FORMAT_VERSION, 0, len(header)),
        header,
        self.keys.astype("<i8").tobytes(),
        self.values.astype("<f4").tobytes(),
        self.evicted.astype("<i8").tobytes(),
    ])
    return body + _CRC.pack(zlib.crc32(body))

  @classmethod
  def deserialize(cls, data: bytes) -> "EmbeddingPatch":
    """Decodes `serialize` output; raises `PatchError` on any corruption."""
    data = bytes(data)
    if len(data) < _PATCH_PREFIX.size + _CRC.size:
      raise PatchError(f"patch too short: {len(data)} bytes")
    magic, version, _, header_len = _PATCH_PREFIX.unpack_from(data)
    if magic != _PATCH_MAGIC:
      raise PatchError(f"not an embedding patch: magic {magic!r}")
    if version != FORMAT_VERSION:
      raise PatchError(f"unsupported patch format version {version} "
                       f"(this reader knows {FORMAT_VERSION})")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[:-_CRC.size]) != crc:
      raise PatchError("patch checksum mismatch: the patch is corrupt")
    start = _PATCH_PREFIX.size
    try:
      header = json.loads(data[start:start + header_len].decode("utf-8"))
      n, dim, e = header["num_keys"], header["dim"], header["num_evicted"]
    except (ValueError, KeyError, TypeError) as error:
      raise PatchError(f"bad patch header: {error}") from error
    offset = start + header_len
    expected = offset + 8 * n + 4 * n * dim + 8 * e + _CRC.size
    if expected != len(data):
      raise PatchError(f"patch length {len(data)} does not match its header "
                       f"({expected} bytes for {n} keys of dim {dim} and "
                       f"{e} evicted)")
    keys = np.frombuffer(data, "<i8", n, offset).astype(np.int64)
    offset += 8 * n
    values = np.frombuffer(data, "<f4", n * dim, offset).astype(
        np.float32).reshape([n, dim])
    offset += 4 * n * dim
    evicted = np.frombuffer(data, "<i8", e, offset).astype(np.int64)
    try:
      return cls(keys=keys, values=values, evicted=evicted,
                 model_name=header["model_name"],
                 table_name=header["table_name"],
                 sequence=header["sequence"],
                 created_at=header["created_at"],
                 watermark=header["watermark"], full=header["full"])
    except (KeyError, TypeError, ValueError) as error:
      raise PatchError(f"bad patch content: {error}") from error

  # ------------------------------------------------------------------- chunks

  @property
  def patch_id(self) -> str:
    """`model/table/sequence`: what identifies the patch across chunks."""
    return f"{self.model_name}/{self.table_name}/{self.sequence}"

  def to_chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> List[bytes]:
    """Splits the serialized patch into messages of at most `max_bytes`."""
    patch_id = self.patch_id.encode("utf-8")
    overhead = _CHUNK_PREFIX.size + len(patch_id)
    if isinstance(max_bytes, bool) or not isinstance(
        max_bytes, int) or max_bytes <= overhead:
      raise ValueError(f"`max_bytes` must be an integer above the chunk "
                       f"header size {overhead}. Received: "
                       f"max_bytes={max_bytes!r}")
    data = self.serialize()
    step = max_bytes - overhead
    pieces = [data[i:i + step] for i in range(0, len(data), step)]
    crc = zlib.crc32(data)
    return [
        _CHUNK_PREFIX.pack(_CHUNK_MAGIC, FORMAT_VERSION, 0, i, len(pieces),
                           len(data), crc, zlib.crc32(piece),
                           len(patch_id)) + patch_id + piece
        for i, piece in enumerate(pieces)
    ]

  @staticmethod
  def read_chunk(chunk: bytes):
    """Decodes one chunk: `(patch_id, index, count, total_len, crc, piece)`."""
    chunk = bytes(chunk)
    if len(chunk) < _CHUNK_PREFIX.size:
      raise PatchError(f"patch chunk too short: {len(chunk)} bytes")
    (magic, version, _, index, count, total, crc, piece_crc,
     id_len) = _CHUNK_PREFIX.unpack_from(chunk)
    if magic != _CHUNK_MAGIC:
      raise PatchError(f"not a patch chunk: magic {magic!r}")
    if version != FORMAT_VERSION:
      raise PatchError(f"unsupported patch chunk version {version}")
    if count == 0 or index >= count:
      raise PatchError(f"bad chunk index {index} of {count}")
    start = _CHUNK_PREFIX.size + id_len
    piece = chunk[start:]
    if zlib.crc32(piece) != piece_crc:
      raise PatchError(f"chunk {index} of {count} is corrupt "
                       "(checksum mismatch)")
    try:
      patch_id = chunk[_CHUNK_PREFIX.size:start].decode("utf-8")
    except UnicodeDecodeError as error:
      raise PatchError(f"bad chunk id: {error}") from error
    return patch_id, index, count, total, crc, piece

  @classmethod
  def from_chunks(cls, chunks: Iterable[bytes]) -> "EmbeddingPatch":
    """Reassembles a patch from all of its chunks, in any order."""
    pieces = {}
    identity = None
    for chunk in chunks:
      patch_id, index, count, total, crc, piece = cls.read_chunk(chunk)
      if identity is None:
        identity = (patch_id, count, total, crc)
      elif identity != (patch_id, count, total, crc):
        raise PatchError(f"chunk of patch {patch_id!r} mixed with chunks of "
                         f"patch {identity[0]!r}")
      pieces[index] = piece
    if identity is None:
      raise PatchError("no chunks given")
    patch_id, count, total, crc = identity
    if len(pieces) != count:
      missing = sorted(set(range(count)) - set(pieces))
      raise PatchError(f"patch {patch_id!r} is missing chunks {missing}")
    data = b"".join(pieces[i] for i in range(count))
    if len(data) != total or zlib.crc32(data) != crc:
      raise PatchError(f"patch {patch_id!r} does not reassemble to its "
                       "checksum")
    return cls.deserialize(data)


def merge_patches(patches: Sequence[EmbeddingPatch]) -> EmbeddingPatch:
  """One patch that a replica applies in place of `patches`, in order.

  Compacts a backlog of one table's patches (consecutive, in sequence
  order): each key keeps its newest value, a key evicted after its last
  upsert is listed as evicted only, and a snapshot (`full`) supersedes
  everything before it. Applying the result gives the same table as
  applying `patches` one by one, with one request instead of many.

  Args:
    patches: patches of one model and table, in increasing `sequence`.

  Returns:
    An `EmbeddingPatch` with the last patch's sequence, creation time and
    watermark.

  Raises:
    ValueError: if `patches` is empty, mixes tables or dimensions, or is
      not in increasing sequence order.
  """
  patches = list(patches)
  if not patches:
    raise ValueError("`patches` must hold at least one patch")
  for p in patches:
    if not isinstance(p, EmbeddingPatch):
      raise TypeError("`patches` must hold tm.EmbeddingPatch objects. "
                      f"Received: {type(p).__name__}")
  first, last = patches[0], patches[-1]
  names = {(p.model_name, p.table_name) for p in patches}
  if len(names) > 1:
    raise ValueError(f"`patches` must be of one model and table. Received: "
                     f"{sorted(names)}")
  sequences = [p.sequence for p in patches]
  if any(b <= a for a, b in zip(sequences, sequences[1:])):
    raise ValueError("`patches` must be in increasing sequence order. "
                     f"Received sequences {sequences}")
  dims = {p.dim for p in patches if len(p)}
  if len(dims) > 1:
    raise ValueError(f"`patches` mix embedding dimensions {sorted(dims)}")
  dim = dims.pop() if dims else (first.values.shape[1])
  start = max((i for i, p in enumerate(patches) if p.full), default=0)
  latest = {}           # key -> (patch index, row) or None when evicted
  for i, p in enumerate(patches[start:], start):
    for key in p.evicted.tolist():
      latest[key] = None
    for row, key in enumerate(p.keys.tolist()):
      latest[key] = (i, row)
  keys = [k for k, where in latest.items() if where is not None]
  values = (np.stack([patches[latest[k][0]].values[latest[k][1]]
                      for k in keys]) if keys else
            np.zeros([0, dim], np.float32))
  evicted = [k for k, where in latest.items() if where is None]
  return EmbeddingPatch(
      keys=np.array(keys, np.int64), values=values,
      evicted=np.array(evicted, np.int64), model_name=last.model_name,
      table_name=last.table_name, sequence=last.sequence,
      created_at=last.created_at, watermark=last.watermark,
      full=patches[start].full)
