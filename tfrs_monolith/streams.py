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
"""Stream I/O: one small interface over Kafka and over a local file log.

Topics carry bytes. A `Transport` opens producers and consumers:

* `KafkaTransport` (`kafka://host:port[,host:port]`): kafka-python clients
  with safe defaults: `acks="all"`, idempotent producer, no auto-commit
  (commit explicitly what you have made durable).
* `FileTransport` (`file:///path`): an append-only log per topic on local
  disk, for single-machine runs with no broker. Several processes may
  produce to it; consumers follow it as it grows.

`open_transport(url)` picks one from a URL. Messages that cannot be parsed go
to a dead-letter topic through `DeadLetterQueue`, with the reason, and are
counted: nothing is dropped silently.

The JSON event schemas (`impressions`, `actions`) and the `examples` record
format are defined here too; see `parse_impression`, `parse_action` and
`parse_example`.
"""

import abc
import base64
import collections
import dataclasses
import fcntl
import json
import math
import os
import struct
import time
import urllib.parse
import zlib
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "Record", "Transport", "Producer", "Consumer", "FileTransport",
    "KafkaTransport", "open_transport", "DeadLetterQueue", "dead_letter",
    "MalformedMessage",
    "Topics", "parse_impression", "parse_action", "parse_example",
    "encode_event",
]

TopicPartition = Tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Record:
  """One message read from a topic."""
  topic: str
  partition: int
  offset: int
  key: Optional[bytes]
  value: bytes
  timestamp_ms: int


@dataclasses.dataclass(frozen=True)
class Topics:
  """Topic names of the data flow (all configurable)."""
  impressions: str = "impressions"
  actions: str = "actions"
  examples: str = "examples"
  patches: str = "patches"
  dead_letters: str = "dead-letters"


class _Closable(abc.ABC):
  """A client released by `close()`, also as a context manager."""

  @abc.abstractmethod
  def close(self):
    """Releases the client."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class Producer(_Closable):
  """Sends messages to topics."""

  @abc.abstractmethod
  def send(self, topic: str, value: bytes, key: Optional[bytes] = None):
    """Queues one message; `flush` waits until all are durable."""

  @abc.abstractmethod
  def flush(self, timeout: Optional[float] = None):
    """Blocks until every sent message is acknowledged (or raises)."""

  @abc.abstractmethod
  def close(self):
    """Flushes and releases the producer."""


class Consumer(_Closable):
  """Reads messages of all partitions of some topics, in offset order."""

  @abc.abstractmethod
  def poll(self, max_records: int = 500,
           timeout: float = 1.0) -> List[Record]:
    """Returns up to `max_records` new records, waiting up to `timeout` s."""

  @abc.abstractmethod
  def seek(self, offsets: Mapping[TopicPartition, int]):
    """Continues each (topic, partition) from the given next offset."""

  @abc.abstractmethod
  def position(self) -> Dict[TopicPartition, int]:
    """The next offset to read, per (topic, partition) read so far."""

  @abc.abstractmethod
  def commit(self, offsets: Mapping[TopicPartition, int]):
    """Records the next offsets to read for this consumer's group."""

  @abc.abstractmethod
  def committed(self) -> Dict[TopicPartition, int]:
    """The group's committed next offsets (missing: never committed)."""

  @abc.abstractmethod
  def end_offsets(self) -> Dict[TopicPartition, int]:
    """The offset after the last message of each (topic, partition) read;
    with `position()`, the consumer's lag. Cheap enough to ask often."""

  @abc.abstractmethod
  def close(self):
    """Releases the consumer (commits nothing)."""


class Transport(abc.ABC):
  """Opens producers and consumers on one message system."""

  url: str

  @abc.abstractmethod
  def producer(self) -> Producer:
    """A new producer."""

  @abc.abstractmethod
  def consumer(self, topics: Sequence[str], group_id: str) -> Consumer:
    """A consumer of every partition of `topics` for `group_id`.

    It starts at the group's committed offsets, else at the beginning.
    """

  @abc.abstractmethod
  def create_topics(self, topics: Iterable[str], partitions: int = 1):
    """Creates the topics that do not exist yet."""

  @abc.abstractmethod
  def end_offsets(self, topics: Sequence[str]) -> Dict[TopicPartition, int]:
    """The offset after the last message, per (topic, partition)."""


def open_transport(url: str, **config) -> Transport:
  """A transport from a URL: `kafka://h:p[,h:p]` or `file:///dir`.

  Args:
    url: where the topics live.
    **config: extra client settings (Kafka only), e.g. `client_id`.

  Raises:
    ValueError: for any other scheme.
  """
  if not isinstance(url, str):
    raise TypeError(f"`url` must be a string. Received: url={url!r}")
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme == "file":
    if not parsed.path:
      raise ValueError(f"a file:// URL needs a path. Received: url={url!r}")
    return FileTransport(parsed.path)
  if parsed.scheme == "kafka":
    servers = parsed.netloc or parsed.path.lstrip("/")
    if not servers:
      raise ValueError("a kafka:// URL needs host:port. Received: "
                       f"url={url!r}")
    return KafkaTransport(servers, **config)
  raise ValueError("`url` must start with kafka:// or file://. Received: "
                   f"url={url!r}")


# ------------------------------------------------------------------ file log

_FRAME = struct.Struct("<4sIqiI")    # magic, crc, timestamp_ms, key_len, len
_FRAME_MAGIC = b"TMLR"
_READ_BYTES = 1 << 20


def _check_topic(topic):
  if not isinstance(topic, str) or not topic or topic.startswith(
      (".", "_")) or "/" in topic or "\\" in topic:
    raise ValueError("a topic name must be a non-empty string without "
                     "slashes that does not start with '.' or '_'. Received: "
                     f"topic={topic!r}")
  return topic


def write_json_atomic(path, data):
  """Writes `data` as JSON to `path` durably: a reader sees old or new."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class FileTransport(Transport):
  """Topics as append-only files under `root` (one partition each).

  Each record is framed with its length and a CRC32, so a reader never sees
  a half-written record; writers take an exclusive lock to append, so
  several processes can produce to one topic. Offsets count records.
  Committed group offsets live in `root/_groups/<group>.json`.
  """

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self.url = "file://" + self.root
    os.makedirs(os.path.join(self.root, "_groups"), exist_ok=True)

  def _log(self, topic):
    return os.path.join(self.root, _check_topic(topic) + ".log")

  def producer(self) -> Producer:
    return _FileProducer(self)

  def consumer(self, topics: Sequence[str], group_id: str) -> Consumer:
    return _FileConsumer(self, topics, group_id)

  def create_topics(self, topics: Iterable[str], partitions: int = 1):
    if partitions != 1:
      raise ValueError("FileTransport topics have one partition. Received: "
                       f"partitions={partitions!r}")
    for topic in topics:
      with open(self._log(topic), "ab"):
        pass

  def end_offsets(self, topics: Sequence[str]) -> Dict[TopicPartition, int]:
    ends = {}
    for topic in topics:
      reader = _LogReader(self._log(topic))
      reader.skip(math.inf)
      ends[(topic, 0)] = reader.offset
      reader.close()
    return ends


class _FileProducer(Producer):

  def __init__(self, transport):
    self._transport = transport
    self._pending = collections.defaultdict(list)

  def send(self, topic, value, key=None):
    if not isinstance(value, (bytes, bytearray, memoryview)):
      raise TypeError(f"`value` must be bytes. Received: value of type "
                      f"{type(value).__name__}")
    if key is not None and not isinstance(key, (bytes, bytearray)):
      raise TypeError(f"`key` must be bytes or None. Received: key of type "
                      f"{type(key).__name__}")
    value = bytes(value)
    key_bytes = b"" if key is None else bytes(key)
    key_len = -1 if key is None else len(key_bytes)
    body = key_bytes + value
    frame = _FRAME.pack(_FRAME_MAGIC, zlib.crc32(body), int(time.time() * 1000),
                        key_len, len(value)) + body
    self._pending[self._transport._log(topic)].append(frame)  # pylint: disable=protected-access

  def flush(self, timeout=None):
    del timeout
    pending, self._pending = self._pending, collections.defaultdict(list)
    for path, frames in pending.items():
      with open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
          f.write(b"".join(frames))
          f.flush()
          os.fsync(f.fileno())
        finally:
          fcntl.flock(f, fcntl.LOCK_UN)

  def close(self):
    self.flush()


class _LogReader:
  """Reads framed records of one topic file from a record offset."""

  def __init__(self, path):
    self.path = path
    self.offset = 0
    self._pos = 0
    self._file = None

  def _open(self):
    if self._file is None and os.path.exists(self.path):
      self._file = open(self.path, "rb")  # pylint: disable=consider-using-with
    return self._file

  def read(self, limit):
    """Up to `limit` complete records as (offset, ts, key, value)."""
    out = []
    f = self._open()
    if f is None:
      return out
    f.seek(self._pos)
    buffer = memoryview(f.read(_READ_BYTES))
    at = 0
    while len(out) < limit:
      if len(buffer) - at < _FRAME.size:
        if at == 0 and len(buffer) == 0:
          break
        # Refill from the first unread byte (a record may straddle reads).
        f.seek(self._pos)
        buffer = memoryview(f.read(max(_READ_BYTES, 2 * _FRAME.size)))
        at = 0
        if len(buffer) < _FRAME.size:
          break
      magic, crc, ts, key_len, value_len = _FRAME.unpack_from(buffer, at)
      body_len = max(key_len, 0) + value_len
      end = at + _FRAME.size + body_len
      if end > len(buffer):
        f.seek(self._pos)
        buffer = memoryview(f.read(max(_READ_BYTES, _FRAME.size + body_len)))
        at, end = 0, _FRAME.size + body_len
        if end > len(buffer):
          break   # A writer is still appending this record.
      body = buffer[at + _FRAME.size:end]
      if magic != _FRAME_MAGIC or zlib.crc32(body) != crc:
        raise IOError(f"{self.path}: corrupt record at offset {self.offset} "
                      f"(byte {self._pos})")
      key = None if key_len < 0 else bytes(body[:key_len])
      out.append((self.offset, ts, key, bytes(body[max(key_len, 0):])))
      self._pos += end - at
      self.offset += 1
      at = end
    return out

  def skip(self, count):
    while count > 0:
      got = self.read(min(count, 4096))
      if not got:
        return
      count -= len(got)

  def close(self):
    if self._file is not None:
      self._file.close()
      self._file = None


class _FileConsumer(Consumer):

  def __init__(self, transport, topics, group_id):
    if isinstance(topics, str):
      topics = [topics]
    self._transport = transport
    self._group_path = os.path.join(transport.root, "_groups",
                                    _check_topic(group_id) + ".json")
    self._readers = {(topic, 0): _LogReader(transport._log(topic))  # pylint: disable=protected-access
                     for topic in topics}
    # Readers that follow each log's end, so that `end_offsets` only reads
    # what was appended since its last call.
    self._ends = {tp: _LogReader(reader.path)
                  for tp, reader in self._readers.items()}
    self.seek(self.committed())

  def poll(self, max_records=500, timeout=1.0):
    deadline = time.monotonic() + timeout
    while True:
      records = []
      for (topic, partition), reader in self._readers.items():
        for offset, ts, key, value in reader.read(max_records - len(records)):
          records.append(Record(topic, partition, offset, key, value, ts))
        if len(records) >= max_records:
          break
      if records or time.monotonic() >= deadline:
        return records
      time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

  def seek(self, offsets):
    for tp, offset in offsets.items():
      if tp not in self._readers:
        continue
      reader = _LogReader(self._readers[tp].path)
      self._readers[tp].close()
      reader.skip(offset)
      if reader.offset < offset:
        raise ValueError(f"cannot seek {tp} to offset {offset}: the log ends "
                         f"at {reader.offset}")
      self._readers[tp] = reader

  def position(self):
    return {tp: reader.offset for tp, reader in self._readers.items()}

  def commit(self, offsets):
    committed = {f"{t}:{p}": o for (t, p), o in self.committed().items()}
    committed.update({f"{t}:{p}": int(o) for (t, p), o in offsets.items()})
    write_json_atomic(self._group_path, committed)

  def committed(self):
    if not os.path.exists(self._group_path):
      return {}
    with open(self._group_path, encoding="utf-8") as f:
      data = json.load(f)
    out = {}
    for name, offset in data.items():
      topic, _, partition = name.rpartition(":")
      out[(topic, int(partition))] = int(offset)
    return out

  def end_offsets(self):
    for reader in self._ends.values():
      reader.skip(math.inf)
    return {tp: reader.offset for tp, reader in self._ends.items()}

  def close(self):
    for reader in list(self._readers.values()) + list(self._ends.values()):
      reader.close()


# --------------------------------------------------------------------- Kafka


class KafkaTransport(Transport):
  """Kafka through kafka-python, with durable defaults.

  Producers: `acks="all"`, idempotent, retries. Consumers: no auto-commit,
  start at the earliest offset when the group has none, read committed
  offsets explicitly. `**config` overrides client settings of both.
  """

  def __init__(self, bootstrap_servers: str, **config):
    import kafka  # pylint: disable=g-import-not-at-top
    self._kafka = kafka
    self.bootstrap_servers = bootstrap_servers
    self.url = "kafka://" + bootstrap_servers
    self._config = config

  def producer(self) -> Producer:
    settings = dict(bootstrap_servers=self.bootstrap_servers, acks="all",
                    enable_idempotence=True, linger_ms=5,
                    max_request_size=1_048_576, request_timeout_ms=30_000,
                    retries=2**31 - 1)
    settings.update(self._config)
    return _KafkaProducer(self._kafka.KafkaProducer(**settings))

  def consumer(self, topics: Sequence[str], group_id: str) -> Consumer:
    if isinstance(topics, str):
      topics = [topics]
    settings = dict(bootstrap_servers=self.bootstrap_servers,
                    group_id=group_id, enable_auto_commit=False,
                    auto_offset_reset="earliest", max_poll_records=2048,
                    fetch_max_wait_ms=100)
    settings.update(self._config)
    return _KafkaConsumer(self._kafka, settings, list(topics))

  def _admin(self):
    from kafka.admin import KafkaAdminClient  # pylint: disable=g-import-not-at-top
    return KafkaAdminClient(bootstrap_servers=self.bootstrap_servers)

  def create_topics(self, topics: Iterable[str], partitions: int = 1):
    from kafka.admin import NewTopic  # pylint: disable=g-import-not-at-top
    from kafka.errors import TopicAlreadyExistsError  # pylint: disable=g-import-not-at-top
    admin = self._admin()
    try:
      existing = set(admin.list_topics())
      new = [NewTopic(_check_topic(t), partitions, 1) for t in topics
             if t not in existing]
      if new:
        try:
          admin.create_topics(new, wait_for_metadata=True)
        except TopicAlreadyExistsError:
          pass
    finally:
      admin.close()

  def end_offsets(self, topics: Sequence[str]) -> Dict[TopicPartition, int]:
    consumer = self._kafka.KafkaConsumer(
        bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False)
    try:
      partitions = _partitions(self._kafka, consumer, topics)
      ends = consumer.end_offsets(partitions)
      return {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}
    finally:
      consumer.close()


def _partitions(kafka, consumer, topics, timeout=30.0):
  """All TopicPartitions of `topics`, waiting for their metadata."""
  deadline = time.monotonic() + timeout
  out = []
  for topic in topics:
    while True:
      parts = consumer.partitions_for_topic(topic)
      if parts:
        break
      if time.monotonic() > deadline:
        raise TimeoutError(f"topic {topic!r} has no partitions (does it "
                           "exist?)")
      time.sleep(0.1)
    out.extend(kafka.TopicPartition(topic, p) for p in sorted(parts))
  return out


class _KafkaProducer(Producer):

  def __init__(self, producer):
    self._producer = producer
    self._futures = []

  def send(self, topic, value, key=None):
    if not isinstance(value, (bytes, bytearray, memoryview)):
      raise TypeError(f"`value` must be bytes. Received: value of type "
                      f"{type(value).__name__}")
    self._futures.append(self._producer.send(topic, value=bytes(value),
                                             key=key))

  def flush(self, timeout=None):
    self._producer.flush(timeout=timeout)
    futures, self._futures = self._futures, []
    for future in futures:
      future.get(timeout=timeout or 60)   # Raises if the send failed.

  def close(self):
    try:
      self.flush()
    finally:
      self._producer.close()


class _KafkaConsumer(Consumer):
  """Assigns every partition of the topics itself (no rebalancing), so that
  `seek` works at once; commits go to `group_id`."""

  def __init__(self, kafka, settings, topics):
    self._kafka = kafka
    self._consumer = kafka.KafkaConsumer(**settings)
    self._partitions = _partitions(kafka, self._consumer, topics)
    self._consumer.assign(self._partitions)
    committed = self.committed()
    for tp in self._partitions:
      key = (tp.topic, tp.partition)
      if key in committed:
        self._consumer.seek(tp, committed[key])
      else:
        self._consumer.seek_to_beginning(tp)

  def poll(self, max_records=500, timeout=1.0):
    batches = self._consumer.poll(timeout_ms=int(timeout * 1000),
                                  max_records=max_records)
    records = []
    for tp, messages in batches.items():
      for m in messages:
        records.append(Record(tp.topic, tp.partition, m.offset, m.key,
                              m.value, m.timestamp))
    return records

  def seek(self, offsets):
    for (topic, partition), offset in offsets.items():
      tp = self._kafka.TopicPartition(topic, partition)
      if tp in self._partitions:
        self._consumer.seek(tp, int(offset))

  def position(self):
    return {(tp.topic, tp.partition): int(self._consumer.position(tp))
            for tp in self._partitions}

  def commit(self, offsets):
    from kafka.structs import OffsetAndMetadata  # pylint: disable=g-import-not-at-top
    self._consumer.commit({
        self._kafka.TopicPartition(t, p): OffsetAndMetadata(int(o), "", -1)
        for (t, p), o in offsets.items()
    })

  def committed(self):
    out = {}
    for tp in self._partitions:
      offset = self._consumer.committed(tp)
      if offset is not None:
        out[(tp.topic, tp.partition)] = int(offset)
    return out

  def end_offsets(self):
    ends = self._consumer.end_offsets(self._partitions)
    return {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}

  def close(self):
    self._consumer.close(autocommit=False)


# --------------------------------------------------------------- dead letters


def dead_letter(record: Record, reason: str) -> bytes:
  """The JSON dead letter of `record`: where it came from, why it is dead
  and its original key and value (base64). Decode with
  `DeadLetterQueue.decode`."""
  letter = {
      "topic": record.topic,
      "partition": record.partition,
      "offset": record.offset,
      "key": None if record.key is None else base64.b64encode(
          record.key).decode("ascii"),
      "reason": reason,
      "value": base64.b64encode(record.value).decode("ascii"),
      "dead_at_ms": int(time.time() * 1000),
  }
  return json.dumps(letter).encode("utf-8")


class DeadLetterQueue:
  """Sends unusable messages to a dead-letter topic, with the reason.

  Each dead letter is a JSON object: the source topic, partition, offset and
  key, the reason, and the original value (base64). `counts` tallies
  reasons by kind (the text before the first colon).
  """

  def __init__(self, producer: Producer, topic: str = "dead-letters"):
    self._producer = producer
    self.topic = _check_topic(topic)
    self.counts = collections.Counter()

  def send(self, record: Record, reason: str):
    self._producer.send(self.topic, dead_letter(record, reason),
                        key=record.key)
    self.counts[reason.split(":", 1)[0]] += 1

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  @staticmethod
  def decode(value: bytes) -> dict:
    """A dead letter as a dict, with `value` and `key` back as bytes."""
    letter = json.loads(value)
    letter["value"] = base64.b64decode(letter["value"])
    if letter["key"] is not None:
      letter["key"] = base64.b64decode(letter["key"])
    return letter


# -------------------------------------------------------------------- schemas


class MalformedMessage(ValueError):
  """A message that does not follow its topic's schema."""


_ID_TYPES = (str, int)


def _event(value: bytes, topic: str) -> dict:
  try:
    event = json.loads(value)
  except (UnicodeDecodeError, ValueError) as error:
    raise MalformedMessage(f"not JSON: {error}") from None
  if not isinstance(event, dict):
    raise MalformedMessage(f"{topic} event must be a JSON object, got "
                           f"{type(event).__name__}")
  return event


def _field(event, name, types, topic):
  if name not in event:
    raise MalformedMessage(f"missing field: {topic} event has no {name!r}")
  value = event[name]
  if isinstance(value, bool) or not isinstance(value, types):
    raise MalformedMessage(
        f"bad field: {topic} {name!r} must be "
        f"{' or '.join(t.__name__ for t in types)}, got {value!r}")
  if isinstance(value, str) and not value:
    raise MalformedMessage(f"bad field: {topic} {name!r} is empty")
  return value


def _event_time(event, topic):
  t = _field(event, "event_time", (int, float), topic)
  if not math.isfinite(t) or t < 0:
    raise MalformedMessage(f"bad field: {topic} 'event_time' must be a "
                           f"finite number of seconds >= 0, got {t!r}")
  return float(t)


def parse_impression(value: bytes) -> dict:
  """An `impressions` event: the item shown to a user for a request.

  Schema (JSON object): `request_id` (str), `user_id` (str or int),
  `item_id` (str or int), `event_time` (seconds since the epoch), optional
  `features` (object of str -> number, str or list of them).

  Raises:
    MalformedMessage: naming the bad field and value.
  """
  event = _event(value, "impression")
  out = {
      "request_id": _field(event, "request_id", (str,), "impression"),
      "user_id": _field(event, "user_id", _ID_TYPES, "impression"),
      "item_id": _field(event, "item_id", _ID_TYPES, "impression"),
      "event_time": _event_time(event, "impression"),
      "features": event.get("features", {}),
  }
  if not isinstance(out["features"], dict):
    raise MalformedMessage("bad field: impression 'features' must be an "
                           f"object, got {out['features']!r}")
  return out


def parse_action(value: bytes) -> dict:
  """An `actions` event: what the user did with a shown item.

  Schema (JSON object): `request_id` (str), `item_id` (str or int),
  `action` (str, e.g. "click", "like"), `event_time` (seconds), optional
  `user_id`.

  Raises:
    MalformedMessage: naming the bad field and value.
  """
  event = _event(value, "action")
  out = {
      "request_id": _field(event, "request_id", (str,), "action"),
      "item_id": _field(event, "item_id", _ID_TYPES, "action"),
      "action": _field(event, "action", (str,), "action"),
      "event_time": _event_time(event, "action"),
  }
  if "user_id" in event:
    out["user_id"] = _field(event, "user_id", _ID_TYPES, "action")
  return out


def encode_event(event: Mapping) -> bytes:
  """JSON bytes of an impression or action event."""
  return json.dumps(dict(event), sort_keys=True).encode("utf-8")


def parse_example(value: bytes, required: Sequence[str] = ()):
  """An `examples` message: a serialized `tf.train.Example`.

  Args:
    value: the message bytes.
    required: feature names that must be present.

  Returns:
    The `tf.train.Example`.

  Raises:
    MalformedMessage: if it does not parse or lacks a required feature.
  """
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
  from google.protobuf.message import DecodeError  # pylint: disable=g-import-not-at-top
  example = example_pb2.Example()
  try:
    example.ParseFromString(bytes(value))
  except DecodeError as error:
    raise MalformedMessage(f"not a tf.train.Example: {error}") from None
  features = example.features.feature
  for name in required:
    if name not in features or features[name].WhichOneof("kind") is None:
      raise MalformedMessage(f"missing feature: example has no {name!r}")
  return example
