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
import logging
import math
import os
import re
import reprlib
import struct
import time
import urllib.parse
import zlib
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "Record", "Transport", "Producer", "Consumer", "FileTransport",
    "KafkaTransport", "open_transport", "kafka_client_config",
    "kafka_java_config", "BrokerConnectionError", "DeadLetterQueue",
    "dead_letter",
    "MalformedMessage", "MAX_EVENT_BYTES", "MAX_EXAMPLE_BYTES",
    "MAX_ID_BYTES", "Topics", "parse_impression", "parse_action", "parse_example",
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
  value: Optional[bytes]   # None: a tombstone (Kafka's null value).
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
  def commit(self, offsets: Mapping[TopicPartition, int],
             timeout: Optional[float] = None):
    """Records the next offsets to read for this consumer's group.

    `timeout`: the most seconds to wait out a broker that is away before
    raising; None: `KAFKA_OUTAGE_SECONDS`. A best-effort commit (the caller
    keeps its own position) passes a few seconds.
    """

  @abc.abstractmethod
  def committed(self) -> Dict[TopicPartition, int]:
    """The group's committed next offsets (missing: never committed)."""

  @abc.abstractmethod
  def end_offsets(self,
                  timeout: Optional[float] = None
                  ) -> Dict[TopicPartition, int]:
    """The offset after the last message of each (topic, partition) read;
    with `position()`, the consumer's lag. Cheap enough to ask often.
    `timeout` as for `commit` (lag metrics pass a few seconds)."""

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

  For `kafka://` URLs, the environment variable `TFRS_MONOLITH_KAFKA_CONFIG`
  may name a Kafka client `.properties` file (see `kafka_client_config`):
  its TLS and SASL settings then apply to every client of the transport.
  This is how the trainer, the serving sidecar and the Beam transforms
  reach a secured cluster: they all open their transports here.

  Args:
    url: where the topics live.
    **config: extra kafka-python client settings (Kafka only), e.g.
      `client_id`; they win over those of `TFRS_MONOLITH_KAFKA_CONFIG`.

  Raises:
    ValueError: for any other scheme, or a bad properties file.
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
    return KafkaTransport(servers, **_transport_security(config))
  raise ValueError("`url` must start with kafka:// or file://. Received: "
                   f"url={url!r}")


# ------------------------------------------------------------------ file log

_FRAME = struct.Struct("<4sIqiI")    # magic, crc, timestamp_ms, key_len, len
_FRAME_MAGIC = b"TMLR"
# What a frame's CRC covers besides key and value: the frame's byte position
# in the file and its header fields. A valid frame read anywhere but where it
# was written (bytes lost before it), or with another key/value split, fails.
_FRAME_CHECKED = struct.Struct("<QqiI")  # position, timestamp_ms, key_len, len
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

  Each record is framed with its length and a CRC32 (of the record, its
  header and its byte position), so a reader never sees a half-written,
  altered or displaced record; writers take an exclusive lock to append, so
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


def _frame_crc(position, ts, key_len, value_len, body):
  return zlib.crc32(body, zlib.crc32(
      _FRAME_CHECKED.pack(position, ts, key_len, value_len)))


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
    record = (int(time.time() * 1000), key_len, len(value), key_bytes + value)
    self._pending[self._transport._log(topic)].append(record)  # pylint: disable=protected-access

  def flush(self, timeout=None):
    del timeout
    pending, self._pending = self._pending, collections.defaultdict(list)
    for path, records in pending.items():
      with open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
          # Frames are made under the lock: their CRCs cover where they land.
          position = f.seek(0, os.SEEK_END)
          frames = []
          for ts, key_len, value_len, body in records:
            frames.append(_FRAME.pack(
                _FRAME_MAGIC, _frame_crc(position, ts, key_len, value_len,
                                         body), ts, key_len, value_len))
            frames.append(body)
            position += _FRAME.size + len(body)
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
      if magic != _FRAME_MAGIC or key_len < -1:
        if out:
          break   # Return the good records first; raise on the next read.
        raise IOError(f"{self.path}: corrupt record at offset {self.offset} "
                      f"(byte {self._pos}): bad frame header")
      body_len = max(key_len, 0) + value_len
      end = at + _FRAME.size + body_len
      if end > len(buffer):
        # Never read (allocate) more than the file holds: a corrupt length
        # may claim gigabytes.
        if os.fstat(f.fileno()).st_size - self._pos < _FRAME.size + body_len:
          break   # A writer is still appending this record.
        f.seek(self._pos)
        buffer = memoryview(f.read(max(_READ_BYTES, _FRAME.size + body_len)))
        at, end = 0, _FRAME.size + body_len
        if end > len(buffer):
          break   # A writer is still appending this record.
      body = buffer[at + _FRAME.size:end]
      if _frame_crc(self._pos, ts, key_len, value_len, body) != crc:
        if out:
          break
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

  def commit(self, offsets, timeout=None):
    del timeout  # A file never goes away.
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

  def end_offsets(self, timeout=None):
    del timeout
    for reader in self._ends.values():
      reader.skip(math.inf)
    return {tp: reader.offset for tp, reader in self._ends.items()}

  def close(self):
    for reader in list(self._readers.values()) + list(self._ends.values()):
      reader.close()


# --------------------------------------------------------------------- Kafka

# Names of the environment variables that configure Kafka security.
KAFKA_CONFIG_ENV = "TFRS_MONOLITH_KAFKA_CONFIG"
KAFKA_PASSWORD_ENV = "TFRS_MONOLITH_KAFKA_PASSWORD"

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_LOGIN_MODULES = {
    "org.apache.kafka.common.security.plain.PlainLoginModule": ("PLAIN",),
    "org.apache.kafka.common.security.scram.ScramLoginModule":
        ("SCRAM-SHA-256", "SCRAM-SHA-512"),
}
# Standard client setting -> kafka-python keyword argument, for the settings
# that map one to one (librdkafka's names too, where they differ).
_PLAIN_KEYS = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.cafile": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "client.id": "client_id",
}
_SPECIAL_KEYS = ("sasl.jaas.config", "ssl.truststore.location",
                 "ssl.truststore.type", "ssl.endpoint.identification.algorithm")
_FILE_KEYS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
_SECRET_KEY = re.compile(r"password|secret|jaas|token|credential", re.I)
_JAAS = re.compile(
    r"\s*(?P<module>[\w.$]+)\s+(?:required|requisite|sufficient|optional)"
    r"(?P<options>(?:\s+[\w.-]+\s*=\s*(?:\"(?:[^\"\\]|\\.)*\"|[^\s\";]+))*)"
    r"\s*;\s*", re.S)
_JAAS_OPTION = re.compile(
    r"([\w.-]+)\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|([^\s\";]+))", re.S)


def _shown(key, value):
  """`key=value` for an error message; secrets are never shown."""
  return f"{key}=***" if _SECRET_KEY.search(key) else f"{key}={value!r}"


def _properties(text: str) -> List[Tuple[str, str, int]]:
  """(key, value, line number) of a Java `.properties` text, in order.

  Follows `java.util.Properties.load`: `#` and `!` comments, `=`, `:` or
  blanks between key and value, `\\` escapes and line continuations.
  """
  out = []
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    number = i + 1
    line = lines[i].lstrip(" \t\f")
    i += 1
    if not line or line[0] in "#!":
      continue
    # A line ending in an odd number of backslashes continues.
    while (len(line) - len(line.rstrip("\\"))) % 2 == 1:
      line = line[:-1]
      if i >= len(lines):
        break
      line += lines[i].lstrip(" \t\f")
      i += 1
    key, at = [], 0
    while at < len(line):
      char = line[at]
      if char == "\\" and at + 1 < len(line):
        key.append(line[at:at + 2])
        at += 2
        continue
      if char in "=: \t\f":
        break
      key.append(char)
      at += 1
    rest = line[at:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
      rest = rest[1:].lstrip(" \t\f")
    out.append((_unescape("".join(key)), _unescape(rest), number))
  return out


def _unescape(text: str) -> str:
  if "\\" not in text:
    return text
  out, at = [], 0
  while at < len(text):
    char = text[at]
    if char == "\\" and at + 1 < len(text):
      nxt = text[at + 1]
      if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[at + 2:at + 6]):
        out.append(chr(int(text[at + 2:at + 6], 16)))
        at += 6
        continue
      out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(nxt, nxt))
      at += 2
    else:
      out.append(char)
      at += 1
  return "".join(out)


def _jaas_login(value: str, where: str) -> Tuple[str, Dict[str, str]]:
  """(login module, options) of a `sasl.jaas.config` value."""
  match = _JAAS.fullmatch(value)
  if not match:
    # The value holds a password: describe it, never show it.
    raise ValueError(
        "`sasl.jaas.config` must read `<LoginModule> required "
        "username=\"...\" password=\"...\";` (one login module, options "
        f"quoted, ending in ';'). Received: sasl.jaas.config=*** {where}")
  module = match.group("module")
  if module not in _LOGIN_MODULES:
    raise ValueError(
        "`sasl.jaas.config` must use one of "
        f"{', '.join(sorted(_LOGIN_MODULES))}. Received: login module "
        f"{module!r} {where}")
  options = {}
  for key, quoted, bare in _JAAS_OPTION.findall(match.group("options")):
    options[key] = (re.sub(r"\\(.)", r"\1", quoted, flags=re.S)
                    if bare == "" else bare)
  return module, options


def kafka_client_config(path_or_text) -> Dict[str, object]:
  """kafka-python settings from a standard Kafka client `.properties` file.

  Reads the file format of Kafka's Java clients (`key=value` lines, `#` or
  `!` comments) and maps its security settings to the keyword arguments of
  kafka-python's clients, e.g. for `KafkaTransport(servers, **settings)`:

  ```properties
  security.protocol=SASL_SSL
  sasl.mechanism=SCRAM-SHA-512
  sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \\
      required username="alice" password="alice-secret";
  ssl.truststore.type=PEM
  ssl.truststore.location=/etc/kafka/ca.pem
  ```

  Understood settings: `security.protocol` (PLAINTEXT, SSL, SASL_PLAINTEXT,
  SASL_SSL); `sasl.mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512);
  `sasl.jaas.config` (a `PlainLoginModule` or `ScramLoginModule` with
  `username` and `password`) or `sasl.username` and `sasl.password`;
  `ssl.ca.location` or `ssl.cafile` (a PEM CA file; so is
  `ssl.truststore.location` with `ssl.truststore.type=PEM`);
  `ssl.certificate.location`, `ssl.key.location` and `ssl.key.password` (a
  client certificate); `ssl.endpoint.identification.algorithm` (`https`,
  the default, checks the broker's host name; empty or `none` does not);
  `client.id`. Relative file names are relative to the file's folder.

  The environment variable `TFRS_MONOLITH_KAFKA_PASSWORD`, when set,
  replaces the SASL password of the file, so that the file need not hold
  it.

  Args:
    path_or_text: the path of a `.properties` file, or its text (a string
      with a newline or `=` that names no file).

  Returns:
    A dict of kafka-python settings (`security_protocol`, `sasl_mechanism`,
    `sasl_plain_username`, `sasl_plain_password`, `ssl_cafile`, ...).

  Raises:
    ValueError: for an unknown setting, a bad value, SASL without a user
      name or password, TLS or SASL settings that the protocol would
      ignore, or a file it names that does not exist. The message names the
      setting and its value, but never a password.
  """
  if isinstance(path_or_text, os.PathLike) or (
      isinstance(path_or_text, str) and "\n" not in path_or_text and (
          "=" not in path_or_text or os.path.isfile(path_or_text))):
    return _client_config(*_read_properties_file(path_or_text))
  if isinstance(path_or_text, str):
    return _client_config(path_or_text, os.getcwd(), None)
  raise TypeError("`path_or_text` must be a path or the text of a "
                  f".properties file. Received: path_or_text of type "
                  f"{type(path_or_text).__name__}")


def _read_properties_file(path):
  """(text, folder, path) of a properties file."""
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except OSError as error:
    raise ValueError(f"cannot read the Kafka client properties file: "
                     f"{error.strerror}. Received: path={path!r}") from None
  return text, os.path.dirname(os.path.abspath(path)), path


def _client_config(text, base, source):
  """`kafka_client_config` of a text; file names are relative to `base`."""

  def where(line):
    return f"(line {line} of {source})" if source else f"(line {line})"

  raw = {}
  for key, value, line in _properties(text):
    if key not in _PLAIN_KEYS and key not in _SPECIAL_KEYS:
      hint = (" The servers come from the kafka:// URL."
              if key == "bootstrap.servers" else "")
      known = ", ".join(sorted(_PLAIN_KEYS) + sorted(_SPECIAL_KEYS))
      raise ValueError(
          f"`{key}` is not a Kafka client setting that tfrs_monolith "
          f"understands; it knows {known}.{hint} Received: "
          f"{_shown(key, value)} {where(line)}")
    raw[key] = (value.strip(), line)

  settings, lines = {}, {}

  def put(name, key):
    value, line = raw[key]
    settings[name], lines[name] = value, (key, line)

  for key in raw:
    if key in _PLAIN_KEYS:
      put(_PLAIN_KEYS[key], key)

  def fail(name, message):
    key, line = lines[name]
    raise ValueError(f"`{key}` {message}. Received: "
                     f"{_shown(key, raw[key][0])} {where(line)}")

  protocol = settings.get("security_protocol", "PLAINTEXT").upper()
  if "security_protocol" in settings:
    if protocol not in _SECURITY_PROTOCOLS:
      fail("security_protocol",
           f"must be one of {', '.join(_SECURITY_PROTOCOLS)}")
    settings["security_protocol"] = protocol
  if "sasl_mechanism" in settings:
    mechanism = settings["sasl_mechanism"].upper()
    if mechanism not in _SASL_MECHANISMS:
      fail("sasl_mechanism", f"must be one of {', '.join(_SASL_MECHANISMS)}")
    settings["sasl_mechanism"] = mechanism
  if "sasl.jaas.config" in raw:
    value, line = raw["sasl.jaas.config"]
    module, options = _jaas_login(value, where(line))
    mechanism = settings.get("sasl_mechanism")
    if mechanism and mechanism not in _LOGIN_MODULES[module]:
      raise ValueError(
          f"`sasl.jaas.config` uses {module.rsplit('.', 1)[-1]}, which does "
          f"not log in with sasl.mechanism={mechanism!r}. Received: login "
          f"module {module!r} {where(line)}")
    for option, name in (("username", "sasl_plain_username"),
                         ("password", "sasl_plain_password")):
      if option in options and name not in settings:
        settings[name] = options[option]
        lines[name] = ("sasl.jaas.config", line)
  if "ssl.truststore.location" in raw:
    store_type, line = raw.get("ssl.truststore.type", ("JKS", None))
    if store_type.upper() != "PEM":
      raise ValueError(
          "`ssl.truststore.type` must be PEM with ssl.truststore.location: "
          "kafka-python reads CA certificates from PEM files only (export "
          "one with `keytool -exportcert -rfc`, or name it in "
          "ssl.ca.location). Received: "
          f"ssl.truststore.type={store_type!r} "
          f"{where(line or raw['ssl.truststore.location'][1])}")
    if "ssl_cafile" not in settings:
      put("ssl_cafile", "ssl.truststore.location")
  if "ssl.endpoint.identification.algorithm" in raw:
    value, line = raw["ssl.endpoint.identification.algorithm"]
    if value.lower() not in ("", "none", "https"):
      raise ValueError(
          "`ssl.endpoint.identification.algorithm` must be https (check the "
          "broker's host name) or empty (do not). Received: "
          f"ssl.endpoint.identification.algorithm={value!r} {where(line)}")
    settings["ssl_check_hostname"] = value.lower() == "https"
    lines["ssl_check_hostname"] = ("ssl.endpoint.identification.algorithm",
                                   line)

  sasl = protocol.startswith("SASL_")
  password = os.environ.get(KAFKA_PASSWORD_ENV)
  if sasl and password:
    settings["sasl_plain_password"] = password
  for name in settings:
    key, line = lines.get(name, (None, None))
    if name.startswith("sasl_") and not sasl:
      raise ValueError(
          f"`{key}` is a SASL setting, but security.protocol={protocol!r} "
          "does not log in: set security.protocol=SASL_SSL or "
          f"SASL_PLAINTEXT. Received: {_shown(key, raw[key][0])} "
          f"{where(line)}")
    if name.startswith("ssl_") and not protocol.endswith("SSL"):
      raise ValueError(
          f"`{key}` is a TLS setting, but security.protocol={protocol!r} "
          "does not use TLS: set security.protocol=SSL or SASL_SSL. "
          f"Received: {_shown(key, raw[key][0])} {where(line)}")
  if sasl:
    missing = [what for what, name in (
        ("sasl.mechanism", "sasl_mechanism"),
        ("a user name (sasl.jaas.config or sasl.username)",
         "sasl_plain_username"),
        (f"a password (sasl.jaas.config, sasl.password or "
         f"${KAFKA_PASSWORD_ENV})", "sasl_plain_password"))
               if not settings.get(name)]
    if missing:
      raise ValueError(
          f"security.protocol={protocol!r} needs {' and '.join(missing)}. "
          f"Received: settings {sorted(raw)} in "
          f"{source or 'the properties text'}")
  for name in _FILE_KEYS:
    if name in settings:
      path = os.path.join(base, os.path.expanduser(settings[name]))
      if not os.path.isfile(path):
        fail(name, "must name an existing file")
      settings[name] = path
  return settings


def kafka_java_config(settings: Optional[Mapping] = None) -> Dict[str, str]:
  """Java Kafka client properties of kafka-python security settings.

  For Kafka clients that run in Java, e.g. the `consumer_config` of Beam's
  cross-language `ReadFromKafka`: it logs in as the kafka-python clients
  of `open_transport` do.

  Args:
    settings: kafka-python settings such as `kafka_client_config` returns;
      by default those of the file named by `$TFRS_MONOLITH_KAFKA_CONFIG`
      (none when it is unset). Settings other than the security ones and
      `client_id` are left out.

  Returns:
    A dict of Java client properties: `security.protocol`,
    `sasl.mechanism`, `sasl.jaas.config`, a PEM `ssl.truststore.*`, ...

  Raises:
    ValueError: for a client certificate (`ssl_certfile`), which this
      mapping does not carry over.
  """
  if settings is None:
    settings = _transport_security({})
  out = {}
  for name, key in (("security_protocol", "security.protocol"),
                    ("sasl_mechanism", "sasl.mechanism"),
                    ("client_id", "client.id")):
    if settings.get(name) is not None:
      out[key] = str(settings[name])
  if settings.get("ssl_certfile") or settings.get("ssl_keyfile"):
    raise ValueError("`ssl_certfile` (a client certificate) has no Java "
                     "client equivalent here. Received: ssl_certfile="
                     f"{settings.get('ssl_certfile')!r}")
  username = settings.get("sasl_plain_username")
  if username is not None:
    module = ("org.apache.kafka.common.security.plain.PlainLoginModule"
              if settings.get("sasl_mechanism") == "PLAIN" else
              "org.apache.kafka.common.security.scram.ScramLoginModule")

    def quote(text):
      return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'

    out["sasl.jaas.config"] = (
        f"{module} required username={quote(username)} "
        f"password={quote(settings.get('sasl_plain_password') or '')};")
  if settings.get("ssl_cafile"):
    out["ssl.truststore.type"] = "PEM"
    out["ssl.truststore.location"] = str(settings["ssl_cafile"])
  if settings.get("ssl_check_hostname") is False:
    out["ssl.endpoint.identification.algorithm"] = ""
  return out


def _transport_security(config: Mapping) -> Dict[str, object]:
  """The settings of `$TFRS_MONOLITH_KAFKA_CONFIG`, under `config`."""
  path = os.environ.get(KAFKA_CONFIG_ENV)
  if not path:
    return dict(config)
  try:
    settings = _client_config(*_read_properties_file(path))
  except ValueError as error:
    raise ValueError(f"${KAFKA_CONFIG_ENV}: {error}") from None
  settings.update(config)
  return settings


class BrokerConnectionError(ConnectionError):
  """A Kafka client could not bootstrap: no broker answered, or the
  brokers refused its TLS handshake or SASL login."""


class _BootstrapFailures(logging.Handler):
  """Collects why kafka-python's bootstrap attempts failed.

  kafka-python retries a failed connection (refused login included) until
  `bootstrap_timeout_ms` runs out and then raises a bare
  `KafkaTimeoutError`; the reasons are only logged.
  """

  def __init__(self):
    super().__init__(logging.WARNING)
    self.reasons = []

  def emit(self, record):
    for arg in record.args if isinstance(record.args, tuple) else ():
      if isinstance(arg, BaseException):
        text = str(arg)
        if type(arg).__name__ not in text:
          text = f"{type(arg).__name__}: {text}"
        if text not in self.reasons:
          self.reasons.append(text)



class KafkaTransport(Transport):
  """Kafka through kafka-python, with durable defaults.

  Producers: `acks="all"`, idempotent, retries. Consumers: no auto-commit,
  start at the earliest offset when the group has none, read committed
  offsets explicitly.

  `**config` holds kafka-python client settings. Each client this transport
  creates (producers, consumers, the admin client of `create_topics` and
  the consumer of `end_offsets`) takes the ones its kind accepts, over the
  defaults above: so the security settings (`security_protocol`, `sasl_*`,
  `ssl_*`, see `kafka_client_config`) and connection settings (`client_id`,
  `bootstrap_timeout_ms`, ...) reach every client, while producer-only
  settings such as `acks` reach only producers. A setting that no client
  kind accepts raises ValueError. `open_transport` fills `**config` from
  `$TFRS_MONOLITH_KAFKA_CONFIG`.

  A client that cannot bootstrap within `bootstrap_timeout_ms` (30 s by
  default), because no broker answers or the brokers refuse its TLS
  handshake or its login, raises `BrokerConnectionError` naming the
  servers, the security protocol, the user and the reasons kafka-python
  logged.
  """

  def __init__(self, bootstrap_servers: str, **config):
    import kafka  # pylint: disable=g-import-not-at-top
    from kafka.admin import KafkaAdminClient  # pylint: disable=g-import-not-at-top
    self._kafka = kafka
    self.bootstrap_servers = bootstrap_servers
    self.url = "kafka://" + bootstrap_servers
    self._accepted = {
        "producer": set(kafka.KafkaProducer.DEFAULT_CONFIG),
        "consumer": set(kafka.KafkaConsumer.DEFAULT_CONFIG),
        "admin": set(KafkaAdminClient.DEFAULT_CONFIG),
    }
    unknown = set(config).difference(*self._accepted.values())
    if unknown:
      raise ValueError("`config` must hold kafka-python client settings. "
                       f"Received: unknown settings {sorted(unknown)}")
    self._config = config

  def _settings(self, kind, defaults=None):
    """`defaults`, then the settings of `config` that `kind` accepts."""
    settings = dict(defaults or {}, bootstrap_servers=self.bootstrap_servers)
    settings.update({k: v for k, v in self._config.items()
                     if k in self._accepted[kind]})
    return settings

  def _client(self, factory, settings, what):
    """`factory(**settings)`; bootstrap failures raise with their reasons."""
    errors = self._kafka.errors
    failures = _BootstrapFailures()
    logger = logging.getLogger("kafka.net.manager")
    logger.addHandler(failures)
    try:
      return factory(**settings)
    except (errors.KafkaTimeoutError, errors.KafkaConnectionError) as error:
      raise BrokerConnectionError(
          self._connection_failure(what, settings, failures.reasons,
                                   error)) from error
    finally:
      logger.removeHandler(failures)

  def _connection_failure(self, what, settings, reasons, error):
    protocol = str(settings.get("security_protocol", "PLAINTEXT")).upper()
    how = f"security_protocol={protocol}"
    if protocol.startswith("SASL_"):
      how += (f", sasl_mechanism={settings.get('sasl_mechanism')}, user "
              f"{settings.get('sasl_plain_username')!r}")
    timeout = settings.get("bootstrap_timeout_ms", 30_000) / 1000
    reasons = [r for r in reasons if "Unable to bootstrap" not in r]
    why = "; ".join(reasons[:4]) or str(error)
    password = (f"${KAFKA_PASSWORD_ENV} or the file named by "
                f"${KAFKA_CONFIG_ENV}")
    if "SaslAuthenticationFailed" in why:
      hint = ("The broker refused the login: check the user name and the "
              f"password ({password}).")
    elif "CERTIFICATE_VERIFY_FAILED" in why:
      hint = ("The broker's TLS certificate is not trusted: name its CA in "
              "ssl.ca.location (or ssl.truststore.location with "
              "ssl.truststore.type=PEM).")
    elif "ECONNREFUSED" in why or "Connection refused" in why:
      hint = "Is a broker listening there?"
    elif not protocol.startswith("SASL_"):
      hint = ("If the broker requires TLS or a login, name a Kafka client "
              f".properties file in ${KAFKA_CONFIG_ENV}.")
    else:
      hint = ("The broker closed the connection: check the user name and "
              f"the password ({password}), and that the port takes "
              f"{protocol} with {settings.get('sasl_mechanism')}.")
    return (f"{what} could not connect to Kafka at {self.bootstrap_servers} "
            f"with {how} within {timeout:g} s: {why}. {hint}")

  def producer(self) -> Producer:
    settings = self._settings("producer", dict(
        acks="all", enable_idempotence=True, linger_ms=5,
        max_request_size=1_048_576, request_timeout_ms=30_000,
        retries=2**31 - 1))
    return _KafkaProducer(self._client(self._kafka.KafkaProducer, settings,
                                       "a producer"))

  def consumer(self, topics: Sequence[str], group_id: str) -> Consumer:
    if isinstance(topics, str):
      topics = [topics]
    settings = self._settings("consumer", dict(
        group_id=group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=2048,
        fetch_max_wait_ms=100))
    consumer = self._client(self._kafka.KafkaConsumer, settings,
                            "a consumer")
    return _KafkaConsumer(self._kafka, consumer, list(topics))

  def _admin(self):
    """An admin client: it takes connection and security settings only."""
    from kafka.admin import KafkaAdminClient  # pylint: disable=g-import-not-at-top
    return self._client(KafkaAdminClient, self._settings("admin"),
                        "an admin client")

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
    consumer = self._client(
        self._kafka.KafkaConsumer,
        self._settings("consumer", dict(enable_auto_commit=False)),
        "a consumer")
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


# How long a consumer call waits out a broker that is away (a restart, a
# leader election) before the error reaches the caller.
KAFKA_OUTAGE_SECONDS = 300.0
# How long a best-effort call waits: lag metrics, and commits of a position
# its caller also keeps elsewhere (a checkpoint, a state file).
KAFKA_BEST_EFFORT_SECONDS = 2.0


def _outlasting(what, call, *args, seconds=None, **kwargs):
  """`call(*args, **kwargs)`, retried with backoff while Kafka raises
  retriable errors (broker unreachable, timeouts, no leader or
  coordinator), for up to `seconds` (None: `KAFKA_OUTAGE_SECONDS`)."""
  from kafka import errors  # pylint: disable=g-import-not-at-top
  deadline = time.monotonic() + (KAFKA_OUTAGE_SECONDS if seconds is None
                                 else seconds)
  delay = 0.2
  while True:
    try:
      return call(*args, **kwargs)
    except errors.KafkaError as error:
      if not getattr(error, "retriable", False) or (
          time.monotonic() + delay > deadline):
        raise
      logging.getLogger(__name__).warning(
          "%s failed (%s: %s); retrying in %.1f s", what,
          type(error).__name__, error, delay)
      time.sleep(delay)
      delay = min(2 * delay, 5.0)


def _call_timeout(seconds):
  """kafka-python's own bound on one call, for a caller's `timeout`."""
  return {} if seconds is None else {"timeout_ms": max(1, int(seconds * 1000))}


class _KafkaConsumer(Consumer):
  """Assigns every partition of the topics itself (no rebalancing), so that
  `seek` works at once; commits go to `group_id`. Position, commit and
  offset calls wait out a broker outage (`KAFKA_OUTAGE_SECONDS`)."""

  def __init__(self, kafka, consumer, topics):
    self._kafka = kafka
    self._consumer = consumer
    try:
      self._partitions = _partitions(kafka, consumer, topics)
    except BaseException:
      consumer.close(autocommit=False)
      raise
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
    return {(tp.topic, tp.partition): int(_outlasting(
        "reading the consumer position", self._consumer.position, tp))
            for tp in self._partitions}

  def commit(self, offsets, timeout=None):
    from kafka.structs import OffsetAndMetadata  # pylint: disable=g-import-not-at-top
    _outlasting("committing offsets", self._consumer.commit, {
        self._kafka.TopicPartition(t, p): OffsetAndMetadata(int(o), "", -1)
        for (t, p), o in offsets.items()
    }, seconds=timeout, **_call_timeout(timeout))

  def committed(self):
    out = {}
    for tp in self._partitions:
      offset = _outlasting("reading committed offsets",
                           self._consumer.committed, tp)
      if offset is not None:
        out[(tp.topic, tp.partition)] = int(offset)
    return out

  def end_offsets(self, timeout=None):
    ends = _outlasting("reading end offsets", self._consumer.end_offsets,
                       self._partitions, seconds=timeout,
                       **_call_timeout(timeout))
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
      # None: a tombstone (a message with no value).
      "value": None if record.value is None else base64.b64encode(
          record.value).decode("ascii"),
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
    """A dead letter as a dict, with `value` and `key` back as bytes
    (`value` None: the dead message was a tombstone)."""
    letter = json.loads(value)
    if letter["value"] is not None:
      letter["value"] = base64.b64decode(letter["value"])
    if letter["key"] is not None:
      letter["key"] = base64.b64decode(letter["key"])
    return letter


# -------------------------------------------------------------------- schemas


class MalformedMessage(ValueError):
  """A message that does not follow its topic's schema.

  Its text is `kind: detail` (e.g. `bad field: ...`); `DeadLetterQueue`
  counts dead letters by the kind.
  """


# Event messages longer than this (bytes) are rejected before parsing.
MAX_EVENT_BYTES = 65_536
# Example messages longer than this (bytes) are rejected before parsing:
# Kafka's default message limit.
MAX_EXAMPLE_BYTES = 1 << 20
# String ids (`request_id`, `user_id`, `item_id`, `action`) longer than
# this (UTF-8 bytes) are rejected.
MAX_ID_BYTES = 256
# `event_time` must be before 10000-01-01T00:00:00Z.
MAX_EVENT_TIME = 253_402_300_800
_ID_TYPES = (str, int)
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# Bad values are quoted in error messages, shortened: a dead letter keeps
# the whole message anyway.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80
_REPR.maxlist = _REPR.maxdict = 6


def _show(value) -> str:
  return _REPR.repr(value)


def _check_limit(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"`{name}` must be a positive integer. Received: "
                     f"{name}={value!r}")
  return value


def _message_text(value, what: str, max_bytes: int) -> str:
  """The text of a JSON message; rejects oversize and non-UTF-8 ones."""
  if value is None:
    raise MalformedMessage(f"no value: the {what} message is a tombstone")
  if isinstance(value, str):
    value = value.encode("utf-8", "surrogatepass")
  elif not isinstance(value, (bytes, bytearray, memoryview)):
    raise MalformedMessage(f"not JSON: {what} message must be bytes, got "
                           f"{type(value).__name__}")
  size = memoryview(value).nbytes
  if size > max_bytes:
    raise MalformedMessage(f"oversize event: {what} message is {size} "
                           f"bytes, the limit is {max_bytes}")
  try:
    return bytes(value).decode("utf-8")
  except UnicodeDecodeError as error:
    raise MalformedMessage(f"not JSON: not UTF-8 text: {error}") from None


def _check_unicode(event, topic):
  """Rejects strings with lone surrogates (`"\\ud800"`): not Unicode text,
  they cannot be encoded as UTF-8 downstream."""
  stack = [event]
  while stack:
    item = stack.pop()
    if isinstance(item, dict):
      stack.extend(item)
      stack.extend(item.values())
    elif isinstance(item, list):
      stack.extend(item)
    elif isinstance(item, str):
      try:
        item.encode("utf-8")
      except UnicodeEncodeError:
        raise MalformedMessage(
            f"not JSON: {topic} event holds a string that is not Unicode "
            f"text (a lone surrogate): {_show(item)}") from None


def _event(value, topic: str, max_bytes: int) -> dict:
  text = _message_text(value, topic, _check_limit("max_bytes", max_bytes))
  try:
    event = json.loads(text)
  except RecursionError:
    raise MalformedMessage("not JSON: nested too deeply") from None
  except ValueError as error:
    raise MalformedMessage(f"not JSON: {error}") from None
  if not isinstance(event, dict):
    raise MalformedMessage(f"bad event: {topic} event must be a JSON "
                           f"object, got {type(event).__name__}")
  if "\\u" in text:   # Only escapes can make lone surrogates.
    _check_unicode(event, topic)
  return event


def _field(event, name, types, topic, max_id_bytes=None):
  if name not in event:
    raise MalformedMessage(f"missing field: {topic} event has no {name!r}")
  value = event[name]
  if isinstance(value, bool) or not isinstance(value, types):
    raise MalformedMessage(
        f"bad field: {topic} {name!r} must be "
        f"{' or '.join(t.__name__ for t in types)}, got {_show(value)}")
  if isinstance(value, str):
    if not value:
      raise MalformedMessage(f"bad field: {topic} {name!r} is empty")
    size = len(value.encode("utf-8"))
    if max_id_bytes is not None and size > max_id_bytes:
      raise MalformedMessage(f"bad field: {topic} {name!r} is {size} bytes, "
                             f"the limit is {max_id_bytes}")
  elif (max_id_bytes is not None and isinstance(value, int) and
        not _INT64_MIN <= value <= _INT64_MAX):
    raise MalformedMessage(f"bad field: {topic} {name!r} must fit in int64, "
                           f"got {_show(value)}")
  return value


def _event_time(event, topic):
  t = _field(event, "event_time", (int, float), topic)
  # (No float() of an int here: a huge one would overflow.)
  if not (isinstance(t, int) or math.isfinite(t)) or t < 0:
    raise MalformedMessage(f"bad field: {topic} 'event_time' must be a "
                           f"finite number of seconds >= 0, got {_show(t)}")
  if t >= MAX_EVENT_TIME:
    raise MalformedMessage(f"bad field: {topic} 'event_time' must be before "
                           f"year 10000 ({MAX_EVENT_TIME} seconds), got "
                           f"{_show(t)}")
  return float(t)


def parse_impression(value: bytes, max_bytes: int = MAX_EVENT_BYTES,
                     max_id_bytes: int = MAX_ID_BYTES) -> dict:
  """An `impressions` event: the item shown to a user for a request.

  Schema (JSON object, UTF-8): `request_id` (str), `user_id` (str or int),
  `item_id` (str or int), `event_time` (seconds since the epoch), optional
  `features` (object of str -> number, str or list of them). Integer ids
  must fit in int64.

  Args:
    value: the message bytes.
    max_bytes: longer messages are rejected before they are parsed.
    max_id_bytes: longest string id (UTF-8 bytes) accepted.

  Returns:
    A dict of the fields above (`event_time` as a float, `features` `{}`
    when absent).

  Raises:
    MalformedMessage: naming the bad field and value, or `oversize event:`
      with the message's size and the limit.
  """
  _check_limit("max_id_bytes", max_id_bytes)
  event = _event(value, "impression", max_bytes)
  out = {
      "request_id": _field(event, "request_id", (str,), "impression",
                           max_id_bytes),
      "user_id": _field(event, "user_id", _ID_TYPES, "impression",
                        max_id_bytes),
      "item_id": _field(event, "item_id", _ID_TYPES, "impression",
                        max_id_bytes),
      "event_time": _event_time(event, "impression"),
      "features": event.get("features", {}),
  }
  if not isinstance(out["features"], dict):
    raise MalformedMessage("bad field: impression 'features' must be an "
                           f"object, got {_show(out['features'])}")
  return out


def parse_action(value: bytes, max_bytes: int = MAX_EVENT_BYTES,
                 max_id_bytes: int = MAX_ID_BYTES) -> dict:
  """An `actions` event: what the user did with a shown item.

  Schema (JSON object, UTF-8): `request_id` (str), `item_id` (str or int),
  `action` (str, e.g. "click", "like"), `event_time` (seconds), optional
  `user_id`. Integer ids must fit in int64.

  Args:
    value: the message bytes.
    max_bytes: longer messages are rejected before they are parsed.
    max_id_bytes: longest string id or action (UTF-8 bytes) accepted.

  Returns:
    A dict of the fields above (`event_time` as a float).

  Raises:
    MalformedMessage: naming the bad field and value, or `oversize event:`
      with the message's size and the limit.
  """
  _check_limit("max_id_bytes", max_id_bytes)
  event = _event(value, "action", max_bytes)
  out = {
      "request_id": _field(event, "request_id", (str,), "action",
                           max_id_bytes),
      "item_id": _field(event, "item_id", _ID_TYPES, "action", max_id_bytes),
      "action": _field(event, "action", (str,), "action", max_id_bytes),
      "event_time": _event_time(event, "action"),
  }
  if "user_id" in event:
    out["user_id"] = _field(event, "user_id", _ID_TYPES, "action",
                            max_id_bytes)
  return out


def encode_event(event: Mapping) -> bytes:
  """JSON bytes of an impression or action event."""
  return json.dumps(dict(event), sort_keys=True).encode("utf-8")


def parse_example(value: bytes, required: Sequence[str] = (),
                  max_bytes: int = MAX_EXAMPLE_BYTES):
  """An `examples` message: a serialized `tf.train.Example`.

  Args:
    value: the message bytes.
    required: feature names that must be present.
    max_bytes: longer messages are rejected before they are parsed (1 MiB
      by default, Kafka's default message limit).

  Returns:
    The `tf.train.Example`.

  Raises:
    MalformedMessage: if it is too long, does not parse or lacks a required
      feature.
  """
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
  from google.protobuf.message import DecodeError  # pylint: disable=g-import-not-at-top
  _check_limit("max_bytes", max_bytes)
  if value is None:
    raise MalformedMessage("no value: the example message is a tombstone")
  if not isinstance(value, (bytes, bytearray, memoryview)):
    raise MalformedMessage("not a tf.train.Example: the message must be "
                           f"bytes, got {type(value).__name__}")
  size = memoryview(value).nbytes
  if size > max_bytes:
    raise MalformedMessage(f"oversize example: message is {size} bytes, the "
                           f"limit is {max_bytes}")
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
