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
import hashlib
import hmac
import json
import os
import reprlib
import struct
import zlib
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["EmbeddingPatch", "PatchError", "PatchSignatureError", "PatchKeys",
           "FORMAT_VERSION", "merge_patches", "DEFAULT_CHUNK_BYTES",
           "DEFAULT_MAX_PATCH_BYTES", "PATCH_KEYS_ENV"]

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
# A signed patch: magic, format version, flags, key id length; then the key
# id, the HMAC-SHA256 of (prefix, key id, patch) and the serialized patch.
_SIGNED_MAGIC = b"TMPS"
_SIGNED_PREFIX = struct.Struct("<4sHHH")
_MAC_BYTES = 32
# The largest patch a reader puts together by default (a snapshot of a few
# million rows of dim 64); `max_bytes` of `from_chunks` changes it.
DEFAULT_MAX_PATCH_BYTES = 1 << 30
# The widest embedding a patch may carry. A patch of no keys passes the
# length check whatever its header's `dim`; this keeps `[0, dim]` a shape
# numpy can build.
MAX_PATCH_DIM = 1 << 20
# The environment variable `PatchKeys.load` reads keys from (JSON text).
PATCH_KEYS_ENV = "TFRS_MONOLITH_PATCH_KEYS"
_MIN_KEY_BYTES = 16


class PatchError(ValueError):
  """A patch or chunk that cannot be decoded: corrupt, truncated or foreign."""


class PatchSignatureError(PatchError):
  """A patch that fails authentication.

  Attributes:
    kind: `unsigned_patch` (no signature where keys require one),
      `unknown_key` (signed with a key id the reader does not hold) or
      `bad_signature` (the HMAC does not match: forged or altered).
  """

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


class PatchKeys:
  """HMAC-SHA256 keys that sign patches (trainer) and verify them (sidecar).

  A signed patch carries the id of the key that signed it and the HMAC of
  the serialized patch (its model, table and sequence included), so a
  patch cannot be forged, altered or moved to another table without a key.
  A reader holding several keys accepts any of them: rotate by adding the
  new key to every sidecar, then signing with it, then removing the old.

  Keys come from a file or an environment variable, never from a command
  line. Both hold JSON:

  ```json
  {"sign_with": "2026-11", "keys": {"2026-11": "<hex, >= 16 bytes>",
                                    "2026-05": "<hex>"}}
  ```

  Example:

  ```python
  keys = tm.patch.PatchKeys.load("/etc/tfrs-monolith/patch-keys.json")
  chunks = patch.to_chunks(keys=keys)               # trainer
  patch = tm.EmbeddingPatch.from_chunks(chunks, keys=keys)   # sidecar
  ```

  Args:
    keys: key id -> secret (bytes, at least 16).
    sign_with: the id of the key that signs; default: the only key, if
      there is one (else this object only verifies).
  """

  def __init__(self, keys: Mapping[str, bytes], sign_with: Optional[str] = None):
    if not isinstance(keys, Mapping) or not keys:
      raise ValueError("`keys` must be a non-empty mapping of key id to "
                       "secret bytes")
    self._keys = {}
    for key_id, secret in keys.items():
      if not isinstance(key_id, str) or not key_id or len(
          key_id.encode("utf-8")) > 255:
        raise ValueError("a patch key id must be a non-empty string of at "
                         f"most 255 bytes. Received: key id {key_id!r}")
      if not isinstance(secret, (bytes, bytearray)) or len(
          secret) < _MIN_KEY_BYTES:
        raise ValueError(f"patch key {key_id!r} must be at least "
                         f"{_MIN_KEY_BYTES} bytes of secret")
      self._keys[key_id] = bytes(secret)
    if sign_with is None and len(self._keys) == 1:
      sign_with = next(iter(self._keys))
    if sign_with is not None and sign_with not in self._keys:
      raise ValueError(f"`sign_with` must name one of the keys "
                       f"{sorted(self._keys)}. Received: "
                       f"sign_with={sign_with!r}")
    self.sign_with = sign_with

  @property
  def key_ids(self) -> List[str]:
    return sorted(self._keys)

  def __repr__(self) -> str:       # Never shows a secret.
    return f"PatchKeys(key_ids={self.key_ids}, sign_with={self.sign_with!r})"

  @classmethod
  def from_json(cls, text: str, source: str = "patch keys") -> "PatchKeys":
    """Keys from the JSON text described above; `source` names it in
    errors."""
    try:
      config = json.loads(text)
      entries = config["keys"]
      if not isinstance(entries, dict):
        raise TypeError("'keys' must be an object of key id to hex secret")
      keys = {}
      for key_id, secret in entries.items():
        if not isinstance(secret, str):
          raise TypeError(f"the secret of key {key_id!r} must be a hex "
                          "string")
        keys[key_id] = bytes.fromhex(secret)
      sign_with = config.get("sign_with")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
      # Neither message quotes the text, which holds secrets.
      raise ValueError(
          f"{source} must be JSON like {{\"sign_with\": \"id\", \"keys\": "
          f"{{\"id\": \"<hex secret>\"}}}}: {type(error).__name__}: "
          f"{error}") from None
    return cls(keys, sign_with)

  @classmethod
  def load(cls, path: Optional[str] = None,
           env: str = PATCH_KEYS_ENV) -> Optional["PatchKeys"]:
    """Keys from the file `path`, else from the environment variable `env`;
    None when neither is given."""
    if path:
      with open(path, encoding="utf-8") as f:
        return cls.from_json(f.read(), f"patch key file {path!r}")
    text = os.environ.get(env)
    if text:
      return cls.from_json(text, f"environment variable {env}")
    return None

  @staticmethod
  def generate(key_id: str = "k1") -> str:
    """JSON text of a new random key (for a key file)."""
    return json.dumps({"sign_with": key_id,
                       "keys": {key_id: os.urandom(32).hex()}})

  def _mac(self, key_id: str, prefix: bytes, data: bytes) -> bytes:
    mac = hmac.new(self._keys[key_id], prefix, hashlib.sha256)
    mac.update(key_id.encode("utf-8"))
    mac.update(data)
    return mac.digest()

  def sign(self, data: bytes) -> bytes:
    """The signed envelope of a serialized patch."""
    if self.sign_with is None:
      raise ValueError(f"these keys only verify: give `sign_with` (one of "
                       f"{self.key_ids}) to sign")
    key_id = self.sign_with.encode("utf-8")
    prefix = _SIGNED_PREFIX.pack(_SIGNED_MAGIC, FORMAT_VERSION, 0,
                                 len(key_id))
    return b"".join([prefix, key_id,
                     self._mac(self.sign_with, prefix, data), data])

  def verify(self, envelope: bytes) -> Tuple[str, bytes]:
    """`(key_id, serialized patch)` of a signed envelope.

    Raises:
      PatchSignatureError: `unsigned_patch`, `unknown_key` or
        `bad_signature`.
      PatchError: if the envelope is malformed.
    """
    key_id, mac, prefix, data = _open_envelope(envelope)
    if key_id is None:
      raise PatchSignatureError(
          "unsigned_patch", "the patch is not signed, and these patch keys "
          "require a signature")
    if key_id not in self._keys:
      raise PatchSignatureError(
          "unknown_key", f"the patch is signed with key id {key_id!r}, "
          f"which is not one of {self.key_ids}")
    if not hmac.compare_digest(mac, self._mac(key_id, prefix, data)):
      raise PatchSignatureError(
          "bad_signature", f"the patch's HMAC-SHA256 under key {key_id!r} "
          "does not match: it is forged or altered")
    return key_id, data


def _open_envelope(data: bytes):
  """`(key_id, mac, prefix, payload)`; `(None, None, None, data)` when
  `data` is not a signed envelope."""
  if data[:4] != _SIGNED_MAGIC:
    return None, None, None, data
  if len(data) < _SIGNED_PREFIX.size:
    raise PatchError(f"signed patch too short: {len(data)} bytes")
  _, version, _, id_len = _SIGNED_PREFIX.unpack_from(data)
  if version != FORMAT_VERSION:
    raise PatchError(f"unsupported signed patch version {version} (this "
                     f"reader knows {FORMAT_VERSION})")
  start = _SIGNED_PREFIX.size
  if len(data) < start + id_len + _MAC_BYTES:
    raise PatchError(f"signed patch too short: {len(data)} bytes")
  try:
    key_id = data[start:start + id_len].decode("utf-8")
  except UnicodeDecodeError:
    raise PatchError("bad key id in a signed patch: not UTF-8") from None
  mac = data[start + id_len:start + id_len + _MAC_BYTES]
  return key_id, mac, data[:start], data[start + id_len + _MAC_BYTES:]


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
    key_id: the id of the key whose signature was verified when the patch
      was read (`from_chunks(..., keys=...)`); None if it was not.
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
  key_id: Optional[str] = dataclasses.field(default=None, compare=False,
                                            repr=False)

  def __post_init__(self):
    self.keys = _as_keys("keys", self.keys)
    self.evicted = _as_keys("evicted", self.evicted)
    values = np.asarray(self.values, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != self.keys.shape[0]:
      raise ValueError(
          "`values` must have shape [len(keys), dim]. Received: values with "
          f"shape {values.shape} for {self.keys.shape[0]} keys")
    if values.shape[1] > MAX_PATCH_DIM:
      raise ValueError(f"`values` must be at most {MAX_PATCH_DIM} wide. "
                       f"Received: dim={values.shape[1]}")
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

  def sign(self, keys: PatchKeys) -> bytes:
    """The serialized patch in a signed envelope (`keys.sign_with`)."""
    return keys.sign(self.serialize())

  @classmethod
  def deserialize(cls, data: bytes,
                  keys: Optional[PatchKeys] = None) -> "EmbeddingPatch":
    """Decodes `serialize` (or `sign`) output.

    Args:
      data: the bytes.
      keys: when given, the patch must be signed by one of them
        (`PatchSignatureError` otherwise). Without keys a signed patch is
        decoded unverified.

    Raises:
      PatchError: on any corruption.
    """
    data = bytes(data)
    key_id = None
    if keys is not None:
      key_id, data = keys.verify(data)
    else:
      _, _, _, data = _open_envelope(data)
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
    except RecursionError:
      raise PatchError("bad patch header: nested too deeply") from None
    except ValueError as error:
      raise PatchError(f"bad patch header: {error}") from error
    if not isinstance(header, dict):
      raise PatchError("bad patch header: must be a JSON object. Received: "
                       f"{type(header).__name__}")
    missing = sorted({"num_keys", "dim", "num_evicted", "dtype"} - set(header))
    if missing:
      raise PatchError(f"bad patch header: it has no {missing}")
    n, dim, e = header["num_keys"], header["dim"], header["num_evicted"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in (n, dim, e)):
      raise PatchError(
          "bad patch header: `num_keys`, `dim` and `num_evicted` must be "
          f"non-negative integers. Received: num_keys={reprlib.repr(n)}, "
          f"dim={reprlib.repr(dim)}, num_evicted={reprlib.repr(e)}")
    if dim > MAX_PATCH_DIM:
      raise PatchError(f"bad patch header: `dim` must be at most "
                       f"{MAX_PATCH_DIM}. Received: dim={dim}")
    if header["dtype"] != "float32":
      raise PatchError("bad patch header: `dtype` must be 'float32'. "
                       f"Received: dtype={reprlib.repr(header['dtype'])}")
    offset = start + header_len
    expected = offset + 8 * n + 4 * n * dim + 8 * e + _CRC.size
    if expected != len(data):
      raise PatchError(f"patch length {len(data)} does not match its header "
                       f"({expected} bytes for {n} keys of dim {dim} and "
                       f"{e} evicted)")
    row_keys = np.frombuffer(data, "<i8", n, offset).astype(np.int64)
    offset += 8 * n
    values = np.frombuffer(data, "<f4", n * dim, offset).astype(
        np.float32).reshape([n, dim])
    offset += 4 * n * dim
    evicted = np.frombuffer(data, "<i8", e, offset).astype(np.int64)
    watermark = header.get("watermark")
    if not isinstance(watermark, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool)
        for v in watermark.values()):
      raise PatchError("bad patch content: `watermark` must map names to "
                       "integer offsets. Received: "
                       f"watermark={reprlib.repr(watermark)}")
    if not isinstance(header.get("full"), bool):
      raise PatchError("bad patch content: `full` must be true or false. "
                       f"Received: full={reprlib.repr(header.get('full'))}")
    try:
      return cls(keys=row_keys, values=values, evicted=evicted,
                 model_name=header["model_name"],
                 table_name=header["table_name"],
                 sequence=header["sequence"],
                 created_at=header["created_at"],
                 watermark=header["watermark"], full=header["full"],
                 key_id=key_id)
    except (KeyError, TypeError, ValueError) as error:
      raise PatchError(f"bad patch content: {error}") from error

  # ------------------------------------------------------------------- chunks

  @property
  def patch_id(self) -> str:
    """`model/table/sequence`: what identifies the patch across chunks."""
    return f"{self.model_name}/{self.table_name}/{self.sequence}"

  def to_chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES,
                keys: Optional[PatchKeys] = None) -> List[bytes]:
    """Splits the serialized patch into messages of at most `max_bytes`;
    with `keys`, the patch is signed first (`sign`)."""
    patch_id = self.patch_id.encode("utf-8")
    overhead = _CHUNK_PREFIX.size + len(patch_id)
    if isinstance(max_bytes, bool) or not isinstance(
        max_bytes, int) or max_bytes <= overhead:
      raise ValueError(f"`max_bytes` must be an integer above the chunk "
                       f"header size {overhead}. Received: "
                       f"max_bytes={max_bytes!r}")
    data = self.serialize() if keys is None else self.sign(keys)
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
    if chunk is None:
      raise PatchError("not a patch chunk: the message is a tombstone (no "
                       "value)")
    if not isinstance(chunk, (bytes, bytearray, memoryview)):
      raise PatchError("not a patch chunk: the message must be bytes, got "
                       f"{type(chunk).__name__}")
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
    if count > total:   # Every chunk holds at least one byte of the patch.
      raise PatchError(f"bad chunk count {count} for a patch of {total} "
                       "bytes")
    start = _CHUNK_PREFIX.size + id_len
    if start > len(chunk):
      raise PatchError(f"bad chunk id length {id_len}: the chunk is "
                       f"{len(chunk)} bytes")
    piece = chunk[start:]
    if len(piece) > total:
      raise PatchError(f"chunk {index} of {count} holds {len(piece)} bytes, "
                       f"more than the patch's {total}")
    if zlib.crc32(piece) != piece_crc:
      raise PatchError(f"chunk {index} of {count} is corrupt "
                       "(checksum mismatch)")
    try:
      patch_id = chunk[_CHUNK_PREFIX.size:start].decode("utf-8")
    except UnicodeDecodeError as error:
      raise PatchError(f"bad chunk id: {error}") from error
    return patch_id, index, count, total, crc, piece

  @classmethod
  def from_chunks(cls, chunks: Iterable[bytes],
                  keys: Optional[PatchKeys] = None,
                  max_bytes: int = DEFAULT_MAX_PATCH_BYTES
                  ) -> "EmbeddingPatch":
    """Reassembles a patch from all of its chunks, in any order.

    Args:
      chunks: the messages `to_chunks` made.
      keys: when given, the patch must be signed by one of them.
      max_bytes: the largest patch accepted; a larger one is refused from
        its first chunk's header, before anything is buffered.

    Raises:
      PatchError: if the chunks are corrupt, incomplete, mixed or too large
        (`PatchSignatureError` when `keys` reject it).
    """
    pieces = {}
    identity = None
    buffered = 0
    for chunk in chunks:
      patch_id, index, count, total, crc, piece = cls.read_chunk(chunk)
      if total > max_bytes:
        raise PatchError(f"patch {patch_id!r} is {total} bytes, over the "
                         f"limit of {max_bytes} (max_bytes)")
      if identity is None:
        identity = (patch_id, count, total, crc)
      elif identity != (patch_id, count, total, crc):
        raise PatchError(f"chunk of patch {patch_id!r} mixed with chunks of "
                         f"patch {identity[0]!r}")
      buffered += len(piece) - len(pieces.get(index, b""))
      pieces[index] = piece
      if buffered > total:
        raise PatchError(f"chunks of patch {patch_id!r} hold more than its "
                         f"{total} bytes")
    if identity is None:
      raise PatchError("no chunks given")
    patch_id, count, total, crc = identity
    if len(pieces) != count:
      # The first few: `count` may be in the billions.
      missing = []
      for i in range(count):
        if i not in pieces:
          missing.append(i)
          if len(missing) == 10:
            break
      more = count - len(pieces) - len(missing)
      raise PatchError(f"patch {patch_id!r} is missing chunks {missing}" +
                       (f" and {more} more" if more else ""))
    data = b"".join(pieces[i] for i in range(count))
    if len(data) != total or zlib.crc32(data) != crc:
      raise PatchError(f"patch {patch_id!r} does not reassemble to its "
                       "checksum")
    return cls.deserialize(data, keys)


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
