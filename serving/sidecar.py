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
"""The sidecar: applies embedding patches to a model TF Serving is serving.

`Sidecar` follows the patches topic the online trainer writes, puts each
patch back together from its chunks and applies it to the served version
through the `apply_patch` signature (`PredictionService.Predict`), so fresh
embeddings reach a stock `tensorflow_model_server` within seconds and
without a reload.

How it stays correct:

* **Order.** A table's patches are applied in sequence order (the trainer
  keys them by table, so they share a partition). A patch whose sequence
  the served rows already include is skipped.
* **New versions.** It watches `ModelService.GetModelStatus`. When a new
  version becomes available, it asks the version for its watermark (the
  `patch_watermark` signature: the last patch of each table its rows
  include) and replays every patch newer than that, so a dense sync never
  rolls embeddings back.
* **Server restarts.** After any outage it reads back one row it wrote
  (`embedding_rows`); if the row is not what it wrote, the server lost its
  patches (it restarted) and the sidecar replays from the watermark.
* **Crash safety.** Its position (the offset before the oldest patch not yet
  applied), the applied sequences and an index of where each patch starts
  are written to `state_dir` after every patch, atomically. Killed and
  restarted, it goes on from there: no patch is lost, and at most the patch
  in flight is applied twice (harmless: patches are idempotent).
* **Bad patches.** A chunk or patch that fails its checksum, and a patch the
  server rejects (unknown table, wrong dimension), goes to the dead-letter
  topic with the reason and is counted; later patches still apply. Passing
  failures (server down, timeouts) are retried, with backoff, until they
  succeed: nothing is skipped.
* **Authenticity.** Given `patch_keys` (`tm.PatchKeys`), it applies only
  patches signed with one of them (HMAC-SHA256): unsigned, wrongly signed
  and replayed patches (a second copy of a sequence already read, at
  another offset) go to the dead-letter topic with the reason
  (`unsigned_patch`, `bad_signature`, `unknown_key`, `replayed_patch`) and
  are counted. Replays are refused with or without keys.
* **Bounded memory.** A patch larger than `max_patch_bytes` is refused from
  its first chunk's header (`oversize_patch`) and never buffered; if the
  chunks of unfinished patches held at once outgrow that limit, the oldest
  unfinished patch is dropped (`incomplete_patch`).
* **Message limits.** Requests are split to stay under `max_request_bytes`;
  if the server still refuses one as too large, the limit is halved. A
  snapshot patch (`full`) too large for one request is upserted in parts,
  then the served keys it does not list are removed (`table_keys`), so no
  key it lists is ever missing from serving meanwhile.

Metrics (`metrics()`, and `/metrics` in Prometheus text format when a
`metrics_port` is given; `/healthz` answers 200 while the server is
reachable and serving a version): patches applied, skipped, failed and
corrupt, unsigned, wrongly signed, replayed and oversize, rows changed,
requests, retries, replays, served version, lag in records, in sequence
numbers and in seconds.
"""

import collections
import dataclasses
import http.server
import json
import logging
import os
import threading
import time
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfrs_monolith import patch as patch_lib
from tfrs_monolith import streams
from tfrs_monolith.serving import client as client_lib

__all__ = ["Sidecar", "SidecarStats", "DEFAULT_MAX_REQUEST_BYTES"]

# gRPC's usual default receive limit is 4 MiB; leave room for the envelope.
DEFAULT_MAX_REQUEST_BYTES = 4_000_000
_REQUEST_OVERHEAD = 1024
_INDEX_ENTRIES = 100_000     # Per table: how far back a replay can seek.


@dataclasses.dataclass
class SidecarStats:
  """Counters since the sidecar started."""
  patches_applied: int = 0
  patches_skipped: int = 0     # Already included in the served version.
  patches_failed: int = 0      # Rejected by the server: dead-lettered.
  patches_corrupt: int = 0     # Undecodable or incomplete: dead-lettered.
  patches_foreign: int = 0     # Another model's patches, ignored.
  patches_unsigned: int = 0    # No signature while keys require one.
  patches_bad_signature: int = 0   # Forged, altered or of an unknown key.
  patches_replayed: int = 0    # A copy of a sequence already read.
  patches_oversize: int = 0    # Over `max_patch_bytes`.
  dead_letters: int = 0
  sequence_gaps: int = 0       # A patch arrived with a sequence missing.
  requests: int = 0
  rows_changed: int = 0
  replays: int = 0
  serving_errors: int = 0


def _parse_patch_id(patch_id: str) -> Tuple[str, str, int]:
  model, table, sequence = patch_id.rsplit("/", 2)
  return model, table, int(sequence)


def _row_crc(values: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(values, "<f4").tobytes())


class Sidecar:
  """Follows the patches topic and applies each patch to TF Serving.

  Example:

  ```python
  client = tfrs_monolith.serving.ServingClient("127.0.0.1:8500", "ranker")
  transport = tfrs_monolith.streams.open_transport("kafka://127.0.0.1:9092")
  with Sidecar(client, transport, state_dir="/var/lib/sidecar",
               metrics_port=9108) as sidecar:
    sidecar.run()        # until sidecar.stop() (SIGTERM in the CLI)
  ```

  Args:
    client: a `ServingClient` of the served model.
    transport: where the patches topic lives (`tm.streams.open_transport`).
    state_dir: where the position, applied sequences and patch index are
      kept (one directory per served replica).
    topic: the patches topic.
    dead_letter_topic: where undecodable and rejected patches go.
    patch_model: the trainer's model name in the patches (default: the
      served model's name); other models' patches are ignored.
    base_path: the model's base path, read only for versions exported
      without the `patch_watermark` signature (`assets.extra/
      watermark.json`).
    group_id: consumer group the position is also committed to (for lag
      monitoring); default `sidecar-<model>`.
    max_request_bytes: the largest `apply_patch` request sent.
    status_interval: seconds between `GetModelStatus` checks.
    poll_timeout: seconds one poll of the topic waits.
    max_backoff: the longest wait between attempts while the server is
      unreachable.
    metrics_port: serve `/metrics` and `/healthz` on this port (0: any free
      port, see `metrics_address`); None: no HTTP endpoint.
    metrics_host: the address the endpoint binds (loopback by default;
      give "0.0.0.0" to expose it).
    patch_keys: a `tm.PatchKeys`: apply only patches signed with one of
      its keys. None accepts unsigned patches.
    max_patch_bytes: the largest patch (and the most chunk bytes of
      unfinished patches) held in memory.
  """

  def __init__(self,
               client: client_lib.ServingClient,
               transport: streams.Transport,
               state_dir: str,
               topic: str = "patches",
               dead_letter_topic: str = "dead-letters",
               patch_model: Optional[str] = None,
               base_path: Optional[str] = None,
               group_id: Optional[str] = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               status_interval: float = 1.0,
               poll_timeout: float = 0.1,
               max_backoff: float = 5.0,
               metrics_port: Optional[int] = None,
               metrics_host: str = "127.0.0.1",
               patch_keys: Optional[patch_lib.PatchKeys] = None,
               max_patch_bytes: int = patch_lib.DEFAULT_MAX_PATCH_BYTES):
    if (isinstance(max_request_bytes, bool) or
        not isinstance(max_request_bytes, int) or
        max_request_bytes <= 2 * _REQUEST_OVERHEAD):
      raise ValueError("`max_request_bytes` must be an integer above "
                       f"{2 * _REQUEST_OVERHEAD}. Received: "
                       f"max_request_bytes={max_request_bytes!r}")
    for name, value in (("status_interval", status_interval),
                        ("poll_timeout", poll_timeout),
                        ("max_backoff", max_backoff)):
      if isinstance(value, bool) or not isinstance(
          value, (int, float)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number of seconds. "
                         f"Received: {name}={value!r}")
    if (isinstance(max_patch_bytes, bool) or
        not isinstance(max_patch_bytes, int) or max_patch_bytes <= 0):
      raise ValueError("`max_patch_bytes` must be a positive integer. "
                       f"Received: max_patch_bytes={max_patch_bytes!r}")
    if patch_keys is not None and not isinstance(patch_keys,
                                                 patch_lib.PatchKeys):
      raise TypeError("`patch_keys` must be a tm.PatchKeys. Received: "
                      f"{type(patch_keys).__name__}")
    self.patch_keys = patch_keys
    self.max_patch_bytes = max_patch_bytes
    self.client = client
    self.model_name = client.model_name
    self.patch_model = patch_model or client.model_name
    self.topic = topic
    self.base_path = base_path
    self.max_request_bytes = max_request_bytes
    self.status_interval = float(status_interval)
    self.poll_timeout = float(poll_timeout)
    self.max_backoff = float(max_backoff)
    self.stats = SidecarStats()
    self._stop = threading.Event()
    self._lock = threading.Lock()       # Guards what metrics() reads.

    os.makedirs(state_dir, exist_ok=True)
    self.state_dir = state_dir
    self._state_path = os.path.join(state_dir, "state.json")
    self._index_path = os.path.join(state_dir, "index.jsonl")

    transport.create_topics([topic, dead_letter_topic])
    self._producer = transport.producer()
    self._dead = streams.DeadLetterQueue(self._producer, dead_letter_topic)
    self._consumer = transport.consumer([topic],
                                        group_id or f"sidecar-{self.model_name}")

    self._version: Optional[int] = None   # The version patches go to.
    self._applied: Dict[str, int] = {}     # Per table, for `_version`.
    self._seen: Dict[str, int] = {}        # Newest sequence read, per table.
    # Offsets read per partition, and the records read for the first time
    # that are not done yet: a replay re-reads records, but dead-letters
    # (and counts) each bad one once.
    self._read_to: Dict[int, int] = {}
    self._fresh = set()
    self._gaps = set()
    # Per table, a key written last and the CRCs its served value may have
    # (-1: absent); anything else means the server lost our patches.
    self._fingerprints: Dict[str, Tuple[int, List[int]]] = {}
    self._index: Dict[str, "collections.OrderedDict[int, Tuple[int, int]]"]
    self._index = collections.defaultdict(collections.OrderedDict)
    self._pending: Dict[str, Dict[int, streams.Record]] = {}
    self._pending_bytes = 0
    self._ready = collections.deque()     # (patch, records), in order.
    self._serving_ok = False
    self._needs_check = True     # Verify the served rows before applying.
    self._next_status = 0.0
    self._backoff = 0.0
    self._last_commit = 0.0
    self._saved = None            # The state last written, as JSON.
    self._lag = {"records": 0, "seconds": 0.0, "sequences": 0}
    self._last_latency = 0.0
    self.resumed = self._load_state()

    self._http = None
    if metrics_port is not None:
      self._http = _MetricsServer((metrics_host, metrics_port), self)
      threading.Thread(target=self._http.serve_forever, daemon=True,
                       name="sidecar-metrics").start()

  # ------------------------------------------------------------------ state

  def _load_state(self) -> bool:
    if os.path.exists(self._index_path):
      lines = 0
      with open(self._index_path, encoding="utf-8") as f:
        for line in f:
          lines += 1
          try:
            table, sequence, partition, offset = json.loads(line)
          except ValueError:
            continue        # A line cut short by a crash.
          self._remember(table, sequence, partition, offset, write=False)
      kept = sum(len(entries) for entries in self._index.values())
      if lines > 2 * kept + 1000:
        self._compact_index()
    if not os.path.exists(self._state_path):
      # No position of our own: read the topic from its start, skipping
      # what the served version already holds.
      self._consumer.seek({tp: 0 for tp in self._consumer.position()})
      return False
    with open(self._state_path, encoding="utf-8") as f:
      state = json.load(f)
    self._consumer.seek({(self.topic, int(p)): int(o)
                         for p, o in state["offsets"].items()})
    self._version = state["version"]
    self._applied = {t: int(s) for t, s in state["applied"].items()}
    self._seen = {t: int(s) for t, s in state["seen"].items()}
    # After a crash, records past the saved position count as unread: a bad
    # one may be dead-lettered twice, never not at all.
    self._read_to = {int(p): int(o) for p, o in state["offsets"].items()}
    self._fingerprints = {t: (int(k), [int(c) for c in crcs]) for t, (
        k, crcs) in state["fingerprints"].items()}
    return True

  def _compact_index(self):
    """Rewrites the index file with only the entries kept in memory."""
    tmp = f"{self._index_path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      for table, entries in self._index.items():
        for sequence, (partition, offset) in entries.items():
          f.write(json.dumps([table, sequence, partition, offset]) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self._index_path)

  def _remember(self, table, sequence, partition, offset, write=True):
    entries = self._index[table]
    entries[int(sequence)] = (int(partition), int(offset))
    while len(entries) > _INDEX_ENTRIES:
      entries.popitem(last=False)
    if write:
      with open(self._index_path, "a", encoding="utf-8") as f:
        f.write(json.dumps([table, int(sequence), int(partition),
                            int(offset)]) + "\n")

  def _safe_offsets(self) -> Dict[Tuple[str, int], int]:
    """Per partition, the offset before the oldest record not yet done."""
    offsets = dict(self._consumer.position())
    held = [r for chunks in self._pending.values() for r in chunks.values()]
    held += [r for _, records in self._ready for r in records]
    for record in held:
      tp = (record.topic, record.partition)
      offsets[tp] = min(offsets.get(tp, record.offset), record.offset)
    return offsets

  def _save_state(self):
    self._producer.flush()        # Dead letters first: nothing disappears.
    offsets = self._safe_offsets()
    state = {
        "model": self.model_name,
        "topic": self.topic,
        "offsets": {str(p): o for (_, p), o in offsets.items()},
        "version": self._version,
        "applied": self._applied,
        "seen": self._seen,
        "fingerprints": {t: [k, list(c)] for t, (k, c) in
                         self._fingerprints.items()},
    }
    text = json.dumps(state, sort_keys=True)
    if text != self._saved:          # Unchanged state costs no fsync.
      streams.write_json_atomic(self._state_path, state)
      self._saved = text
    now = time.monotonic()
    if now - self._last_commit >= 1.0:
      self._last_commit = now
      try:
        self._consumer.commit(offsets,
                              timeout=streams.KAFKA_BEST_EFFORT_SECONDS)
      except Exception as error:  # pylint: disable=broad-except
        logging.warning("could not commit the sidecar position: %s", error)

  # -------------------------------------------------------------- serving

  def _watermark(self, table: str, version: int) -> int:
    """The last patch of `table` included in `version`."""
    try:
      return self.client.watermark(table, version=version)
    except client_lib.ServingRejected as error:
      details = (error.details or "").lower()
      if self.base_path is None or not ("signature" in details and
                                        "not found" in details):
        raise       # Not an export without the signature.
    path = os.path.join(self.base_path, str(version), "assets.extra",
                        "watermark.json")
    with open(path, encoding="utf-8") as f:
      return int(json.load(f)["watermark"].get(table, 0))

  def _rows_intact(self) -> bool:
    """Whether the served rows still hold the last values written."""
    for table, (key, crcs) in self._fingerprints.items():
      try:
        values, present = self.client.rows(table, [key],
                                           version=self._version)
      except client_lib.TooLarge:
        raise
      except client_lib.ServingRejected as error:
        if error.code is not None and error.code.name == "NOT_FOUND":
          raise               # The version went away: check again later.
        logging.warning("cannot read table %r back: %s", table, error)
        return False
      if (_row_crc(values[0]) if present[0] else -1) not in crcs:
        logging.warning("served table %r lost its patches (key %d): the "
                        "server restarted or reloaded", table, key)
        return False
    return True

  def _check_serving(self):
    """Polls the served version; switches and replays when it changed."""
    self._next_status = time.monotonic() + self.status_interval
    try:
      version = self.client.served_version()
      if version is None:
        self._serving_ok = False
        self._needs_check = True
        return
      if version != self._version:
        self._switch(version, f"version {version} is served")
      elif self._needs_check and not self._rows_intact():
        self._switch(version, "the served rows lost their patches")
      self._needs_check = False
      self._serving_ok = True
      self._backoff = 0.0
    except client_lib.ServingError as error:
      self._serving_down(error)

  def _serving_down(self, error):
    if self._serving_ok or self._backoff == 0.0:
      logging.warning("model server %s: %s", self.client.target, error)
    self._serving_ok = False
    self._needs_check = True
    self.stats.serving_errors += 1
    self._backoff = min(max(2 * self._backoff, 0.1), self.max_backoff)
    self._next_status = time.monotonic() + self._backoff

  def _switch(self, version: int, why: str):
    """Makes `version` the target: every patch newer than its watermark is
    applied to it, re-reading the topic where needed."""
    tables = set(self._applied) | set(self._seen) | set(self._index)
    marks = {}
    for table in sorted(tables):
      try:
        marks[table] = self._watermark(table, version)
      except client_lib.ServingUnavailable:
        raise
      except client_lib.ServingRejected as error:
        # Not in this version: its patches will be rejected, and counted.
        logging.warning("version %d has no table %r: %s", version, table,
                        error)
    offsets = self._safe_offsets()
    rewind = False
    for table, mark in marks.items():
      if self._seen.get(table, 0) <= mark:
        continue      # Nothing newer than the version has been read yet.
      starts = [where for sequence, where in self._index[table].items()
                if sequence > mark]
      if mark + 1 not in self._index[table]:
        rewind = True           # Not indexed: read the topic from the start.
      for partition, offset in starts:
        tp = (self.topic, partition)
        offsets[tp] = min(offsets.get(tp, offset), offset)
    if rewind:
      offsets = {tp: 0 for tp in offsets}
    logging.info("%s: applying patches newer than %s%s", why, marks,
                 " from the start of the topic" if rewind else "")
    self._version = version
    self._applied = marks
    self._fingerprints.clear()     # Set again by the next patch applied.
    self._pending.clear()
    self._pending_bytes = 0
    self._ready.clear()
    self._consumer.seek(offsets)
    self.stats.replays += 1
    self._save_state()

  # ---------------------------------------------------------------- patches

  def _done(self, records: List[streams.Record]):
    self._fresh.difference_update((r.partition, r.offset) for r in records)

  def _dead_letter(self, records: List[streams.Record], reason: str) -> bool:
    """Sends `records` to the dead-letter topic, unless a replay went back
    over them and they were sent already."""
    first = any((r.partition, r.offset) in self._fresh for r in records)
    self._done(records)
    if not first:
      return False
    for record in records:
      self._dead.send(record, reason)
      self.stats.dead_letters += 1
    return True

  def _receive(self, record: streams.Record):
    if record.offset >= self._read_to.get(record.partition, 0):
      self._fresh.add((record.partition, record.offset))
    try:
      self._assemble(record)
    finally:
      self._read_to[record.partition] = max(
          self._read_to.get(record.partition, 0), record.offset + 1)

  def _assemble(self, record: streams.Record):
    try:
      patch_id, index, count, total, *_ = (
          patch_lib.EmbeddingPatch.read_chunk(record.value))
      model, table, sequence = _parse_patch_id(patch_id)
    except (patch_lib.PatchError, ValueError) as error:
      if self._dead_letter([record], f"corrupt_patch: {error}"):
        self.stats.patches_corrupt += 1
      return
    if model != self.patch_model:
      self.stats.patches_foreign += 1
      self._done([record])
      return
    if total > self.max_patch_bytes:
      # Every chunk of it is refused this way: nothing is buffered.
      if self._dead_letter([record], f"oversize_patch: {patch_id} is "
                           f"{total} bytes, over max_patch_bytes="
                           f"{self.max_patch_bytes}") and index == 0:
        self.stats.patches_oversize += 1
      return
    chunks = self._pending.setdefault(patch_id, {})
    if index in chunks:
      self._pending_bytes -= len(chunks[index].value)
    chunks[index] = record
    self._pending_bytes += len(record.value)
    self._bound_pending(patch_id)
    if len(chunks) < count:
      return
    del self._pending[patch_id]
    self._pending_bytes -= sum(len(r.value) for r in chunks.values())
    records = sorted(chunks.values(), key=lambda r: r.offset)
    # A table's patches arrive in order: an older one still incomplete
    # lost a chunk (corrupt) and can never be applied.
    for other in [p for p in self._pending if
                  p.rsplit("/", 1)[0] == f"{model}/{table}" and
                  _parse_patch_id(p)[2] < sequence]:
      self._drop_pending(other, f"incomplete_patch: {other} lost chunks")
    try:
      patch = patch_lib.EmbeddingPatch.from_chunks(
          (r.value for r in records), keys=self.patch_keys,
          max_bytes=self.max_patch_bytes)
    except patch_lib.PatchSignatureError as error:
      if self._dead_letter(records, f"{error.kind}: {patch_id}: {error}"):
        if error.kind == "unsigned_patch":
          self.stats.patches_unsigned += 1
        else:
          self.stats.patches_bad_signature += 1
      return
    except patch_lib.PatchError as error:
      if self._dead_letter(records, f"corrupt_patch: {error}"):
        self.stats.patches_corrupt += 1
      return
    first = records[0]
    where = (first.partition, first.offset)
    known = self._index[table].get(sequence)
    if known != where and sequence <= self._seen.get(table, 0):
      # Read before at another offset (or too long ago to be indexed): a
      # copy sent again. The first copy is what the trainer published.
      if self._dead_letter(records, f"replayed_patch: {patch_id} was read "
                           "before (newest sequence read: "
                           f"{self._seen.get(table, 0)})"):
        self.stats.patches_replayed += 1
      return
    self._seen[table] = max(self._seen.get(table, 0), sequence)
    if known != where:
      self._remember(table, sequence, first.partition, first.offset)
    self._ready.append((patch, records))

  def _drop_pending(self, patch_id: str, reason: str):
    records = list(self._pending.pop(patch_id).values())
    self._pending_bytes -= sum(len(r.value) for r in records)
    if self._dead_letter(records, reason):
      self.stats.patches_corrupt += 1

  def _bound_pending(self, keep: str):
    """Drops the oldest unfinished patches while their chunks outgrow
    `max_patch_bytes` (never `keep`, the one being read)."""
    while self._pending_bytes > self.max_patch_bytes and len(
        self._pending) > 1:
      oldest = min((p for p in self._pending if p != keep),
                   key=lambda p: min(r.offset for r in
                                     self._pending[p].values()))
      self._drop_pending(oldest, f"incomplete_patch: {oldest} dropped: the "
                         "unfinished patches outgrew max_patch_bytes="
                         f"{self.max_patch_bytes}")

  def _requests(self, patch: patch_lib.EmbeddingPatch):
    """`(keys, values, evicted, full)` requests under the size limit:
    evictions first, then upserts, as one patch applies them."""
    room = self.max_request_bytes - _REQUEST_OVERHEAD
    per_key = 8 + 4 * max(patch.dim, 1)
    step_keys = max(1, room // per_key)
    step_evicted = max(1, room // 8)
    empty_values = np.zeros([0, max(patch.dim, 1)], np.float32)
    out = []
    if not (len(patch) or len(patch.evicted) or patch.full):
      return out          # Nothing changed: no request at all.
    if len(patch) + 1 <= step_keys and (
        8 * len(patch.evicted) + per_key * len(patch) <= room):
      return [(patch.keys, patch.values if len(patch) else empty_values,
               patch.evicted, patch.full)]
    for start in range(0, len(patch.evicted), step_evicted):
      out.append((patch.keys[:0], empty_values,
                  patch.evicted[start:start + step_evicted], False))
    for start in range(0, len(patch), step_keys):
      # A snapshot in several parts upserts them all; `_drop_unlisted` then
      # removes the keys it does not list.
      out.append((patch.keys[start:start + step_keys],
                  patch.values[start:start + step_keys], patch.evicted[:0],
                  False))
    return out

  def _drop_unlisted(self, patch: patch_lib.EmbeddingPatch) -> int:
    """After a snapshot sent in parts: removes the served keys it lacks."""
    served = self.client.table_keys(patch.table_name, version=self._version)
    stale = np.setdiff1d(served, patch.keys)
    step = max(1, (self.max_request_bytes - _REQUEST_OVERHEAD) // 8)
    changed = 0
    empty = np.zeros([0, max(patch.dim, 1)], np.float32)
    for start in range(0, len(stale), step):
      self.stats.requests += 1
      changed += self.client.apply_patch(
          patch.table_name, stale[:0], empty, stale[start:start + step],
          False, patch.created_at, version=self._version)
    return changed

  def _apply(self, patch: patch_lib.EmbeddingPatch) -> bool:
    """Applies `patch` to the served version; False if it was skipped."""
    table = patch.table_name
    if table not in self._applied:
      self._applied[table] = self._watermark(table, self._version)
    applied = self._applied[table]
    if patch.sequence <= applied:
      self.stats.patches_skipped += 1
      return False
    if patch.sequence > applied + 1 and (
        table, patch.sequence) not in self._gaps:
      self._gaps.add((table, patch.sequence))     # Once, however replayed.
      self.stats.sequence_gaps += 1
      logging.warning("patch %s follows sequence %d: sequences %d-%d never "
                      "arrived intact", patch.patch_id, applied, applied + 1,
                      patch.sequence - 1)
    self._expect_fingerprint(patch)
    while True:
      try:
        changed = 0
        requests = self._requests(patch)
        for keys, values, evicted, full in requests:
          self.stats.requests += 1
          changed += self.client.apply_patch(
              table, keys, values, evicted, full, patch.created_at,
              version=self._version)
        if patch.full and len(requests) > 1:
          changed += self._drop_unlisted(patch)
        break
      except client_lib.TooLarge:
        if self.max_request_bytes <= 4 * _REQUEST_OVERHEAD:
          raise
        self.max_request_bytes //= 2
        logging.warning("the server refused a request as too large: "
                        "max_request_bytes is now %d", self.max_request_bytes)
    self.stats.rows_changed += changed
    self._applied[table] = patch.sequence
    if len(patch):
      self._fingerprints[table] = (int(patch.keys[-1]),
                                   [_row_crc(patch.values[-1])])
    elif table in self._fingerprints:
      key, crcs = self._fingerprints[table]
      after = self._fingerprint_after(patch, key)
      self._fingerprints[table] = (key, crcs if after is None else [after])
    return True

  @staticmethod
  def _fingerprint_after(patch, key) -> Optional[int]:
    """The CRC `key` has once `patch` is applied (-1: absent; None:
    unchanged)."""
    if patch.full and key not in patch.keys:
      return -1
    where = np.flatnonzero(patch.keys == key)
    if len(where):
      return _row_crc(patch.values[where[0]])
    return -1 if key in patch.evicted else None

  def _expect_fingerprint(self, patch):
    """Before `patch` changes a table's fingerprint row, records that its
    new value is expected too: a crash half-way must not look like a
    server restart."""
    if patch.table_name not in self._fingerprints:
      return
    key, crcs = self._fingerprints[patch.table_name]
    after = self._fingerprint_after(patch, key)
    if after is not None and after not in crcs:
      self._fingerprints[patch.table_name] = (key, crcs + [after])
      self._save_state()

  def _apply_ready(self) -> bool:
    """Applies the patches read so far; False if the server is down."""
    while self._ready:
      patch, records = self._ready[0]
      try:
        applied = self._apply(patch)
      except client_lib.ServingUnavailable as error:
        self._serving_down(error)
        return False
      except client_lib.ServingRejected as error:
        if error.code is not None and error.code.name == "NOT_FOUND":
          self._serving_down(error)     # The version went away.
          return False
        if self._dead_letter(records, f"rejected_patch: {error}"):
          self.stats.patches_failed += 1
        self._ready.popleft()
        self._save_state()
        continue
      self._ready.popleft()
      self._done(records)
      if applied:
        self.stats.patches_applied += 1
        self._last_latency = max(
            0.0, time.time() - records[-1].timestamp_ms / 1000.0)
      self._save_state()
    return True

  # ------------------------------------------------------------------- loop

  def step(self):
    """One round: check the server when due, apply, read more patches."""
    if time.monotonic() >= self._next_status:
      self._check_serving()
      self._measure_lag()
    if not self._serving_ok or self._version is None:
      self._stop.wait(min(self.poll_timeout, max(
          0.0, self._next_status - time.monotonic())))
      return
    if not self._apply_ready():
      return
    records = self._consumer.poll(256, self.poll_timeout)
    for record in records:
      self._receive(record)
    if records:
      if self._apply_ready() and not self._ready:
        self._save_state()

  def run(self, max_seconds: Optional[float] = None) -> SidecarStats:
    """Applies patches until `stop()` (or for `max_seconds`)."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    while not self._stop.is_set():
      if deadline is not None and time.monotonic() >= deadline:
        break
      self.step()
    self._save_state()
    return self.stats

  def stop(self):
    """Asks `run` to return after the current round."""
    self._stop.set()

  def _measure_lag(self):
    try:
      ends = self._consumer.end_offsets(
          timeout=streams.KAFKA_BEST_EFFORT_SECONDS)
    except Exception:  # pylint: disable=broad-except
      return
    position = self._safe_offsets()
    records = sum(max(0, end - position.get(tp, 0))
                  for tp, end in ends.items())
    oldest = [r.timestamp_ms for _, rs in self._ready for r in rs[:1]]
    oldest += [min(r.timestamp_ms for r in chunks.values())
               for chunks in self._pending.values()]
    seconds = (time.time() - min(oldest) / 1000.0) if oldest else 0.0
    sequences = sum(max(0, s - self._applied.get(t, 0))
                    for t, s in self._seen.items())
    with self._lock:
      self._lag = {"records": records, "seconds": max(0.0, seconds),
                   "sequences": sequences}

  # ---------------------------------------------------------------- metrics

  @property
  def healthy(self) -> bool:
    """The server is reachable and serves a version."""
    return self._serving_ok and self._version is not None

  @property
  def served_version(self) -> Optional[int]:
    return self._version

  @property
  def applied_sequences(self) -> Dict[str, int]:
    return dict(self._applied)

  def metrics(self) -> Dict[str, float]:
    """Counters and gauges, flat (`name` or `name/table`)."""
    with self._lock:
      lag = dict(self._lag)
    out = {k: float(v) for k, v in dataclasses.asdict(self.stats).items()}
    out["retries"] = float(self.client.retried)
    out["up"] = float(self.healthy)
    out["served_version"] = float(self._version or 0)
    out["lag_records"] = float(lag["records"])
    out["lag_seconds"] = float(lag["seconds"])
    out["lag_sequences"] = float(lag["sequences"])
    out["last_apply_latency_seconds"] = self._last_latency
    for table, sequence in list(self._applied.items()):
      out[f"applied_sequence/{table}"] = float(sequence)
    return out

  def prometheus(self) -> str:
    """`metrics()` in the Prometheus text exposition format."""
    counters = {f.name for f in dataclasses.fields(SidecarStats)}
    counters.add("retries")
    lines = []
    by_name = collections.defaultdict(list)
    for key, value in sorted(self.metrics().items()):
      name, _, table = key.partition("/")
      by_name[name].append((table, value))
    for name, samples in by_name.items():
      metric = f"tfrs_monolith_sidecar_{name}"
      if name in counters:
        metric += "_total"
      lines.append(f"# TYPE {metric} "
                   f"{'counter' if name in counters else 'gauge'}")
      for table, value in samples:
        labels = f'model="{self.model_name}"'
        if table:
          labels += f',table="{table}"'
        lines.append(f"{metric}{{{labels}}} {value:g}")
    return "\n".join(lines) + "\n"

  @property
  def metrics_address(self) -> Optional[Tuple[str, int]]:
    return None if self._http is None else self._http.server_address[:2]

  def close(self):
    if self._http is not None:
      self._http.shutdown()
      self._http.server_close()
    try:
      self._save_state()
    finally:
      self._consumer.close()
      self._producer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _MetricsServer(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self, address, sidecar):
    self.sidecar = sidecar
    super().__init__(address, _MetricsHandler)


class _MetricsHandler(http.server.BaseHTTPRequestHandler):

  def do_GET(self):  # pylint: disable=invalid-name
    sidecar = self.server.sidecar
    if self.path == "/metrics":
      code, body = 200, sidecar.prometheus()
      kind = "text/plain; version=0.0.4"
    elif self.path == "/healthz":
      healthy = sidecar.healthy
      code, body = (200 if healthy else 503), ("ok\n" if healthy else
                                               "serving unreachable\n")
      kind = "text/plain"
    else:
      code, body, kind = 404, "not found\n", "text/plain"
    data = body.encode("utf-8")
    self.send_response(code)
    self.send_header("Content-Type", kind)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    del args
