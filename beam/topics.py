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
"""Topics in Beam pipelines through `tm.streams` transports: no Java needed.

`ReadFromTopic` reads a bounded range of offsets of a topic (a micro-batch
of a stream: e.g. what arrived since the previous run) with the project's
own consumer, as `(key, value)` pairs.

`WriteToTopic` sends each element with the project's own Kafka producer
(kafka-python: `acks=all`, idempotent) or to a `file://` log, from any Beam
runner, the local ones included; it needs no Java. Each bundle is flushed
before it completes, so an element is never lost; a retried bundle may send
some elements twice (at-least-once, as Beam's own Kafka sink without
exactly-once mode).
"""

import time
import uuid
from typing import Mapping, Optional

import apache_beam as beam

from tfrs_monolith import streams

__all__ = ["ReadFromTopic", "WriteToTopic", "TopicReadError"]

METRICS_NAMESPACE = "tfrs_monolith.topics"


def _check_url_and_topic(url, topic):
  if not isinstance(url, str) or "://" not in url:
    raise ValueError(f"`url` must be kafka://host:port or file:///dir. "
                     f"Received: url={url!r}")
  if not isinstance(topic, str) or not topic:
    raise ValueError(f"`topic` must be a non-empty string. Received: "
                     f"topic={topic!r}")


class _WriteFn(beam.DoFn):

  def __init__(self, url, topic):
    super().__init__()
    self._url = url
    self._topic = topic
    self._transport = None
    self._producer = None
    self._sent = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                              f"sent_{topic}")

  def setup(self):
    self._transport = streams.open_transport(self._url)
    self._transport.create_topics([self._topic])
    self._producer = self._transport.producer()

  def process(self, element):
    key = None
    if isinstance(element, tuple):
      key, element = element
    self._producer.send(self._topic, element, key=key)
    self._sent.inc()

  def finish_bundle(self):
    self._producer.flush()

  def teardown(self):
    if self._producer is not None:
      self._producer.close()
      self._producer = None
    self._transport = None


class WriteToTopic(beam.PTransform):
  """Sends bytes elements (or `(key, value)` pairs) to `topic`.

  Args:
    url: a `tm.streams.open_transport` URL: `kafka://host:port` or
      `file:///dir`.
    topic: the topic; created if missing.
  """

  def __init__(self, url: str, topic: str, label: Optional[str] = None):
    super().__init__(label)
    _check_url_and_topic(url, topic)
    self._url = url
    self._topic = topic

  def expand(self, values):
    return values | "Send" >> beam.ParDo(_WriteFn(self._url, self._topic))


class TopicReadError(RuntimeError):
  """A range of a topic could not be read completely."""


class _ReadRangeFn(beam.DoFn):

  def __init__(self, url, timeout):
    super().__init__()
    self._url = url
    self._timeout = timeout
    self._transport = None
    self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read")

  def setup(self):
    self._transport = streams.open_transport(self._url)

  def process(self, element):
    topic, partition, start, end = element
    if end <= start:
      return
    # A group of its own that never commits: reading moves no one's
    # offsets.
    group = f"read-{topic}-{uuid.uuid4().hex[:12]}"
    with self._transport.consumer([topic], group) as consumer:
      others = {tp: o for tp, o in consumer.end_offsets().items()
                if tp != (topic, partition)}
      consumer.seek({**others, (topic, partition): start})
      offset = start
      deadline = time.monotonic() + self._timeout
      while offset < end:
        records = consumer.poll(min(10_000, end - offset), 0.5)
        for record in records:
          if record.partition != partition or record.offset < offset:
            continue
          if record.offset >= end:
            break
          offset = record.offset + 1
          self._read.inc()
          yield record.key, record.value
        if records:
          deadline = time.monotonic() + self._timeout
        elif time.monotonic() > deadline:
          raise TopicReadError(
              f"{topic}/{partition}: no record after offset {offset} for "
              f"{self._timeout:g} s; the range ends at {end}")


class ReadFromTopic(beam.PTransform):
  """Reads offsets `[start, end)` of each partition of `topic`.

  Outputs `(key, value)` pairs of bytes (`key` may be None), the form
  `tfrs_monolith.beam.ParseEvents` takes. The range is bounded, so the
  pipeline is a batch pipeline on any runner: run one per micro-batch,
  starting each where the previous one ended.

  Args:
    url: a `tm.streams.open_transport` URL.
    topic: the topic.
    start_offsets: `{partition: offset}` where to start (default 0 for
      every partition).
    end_offsets: `{partition: offset}` where to stop, exclusive (default:
      the end of each partition when the pipeline is built).
    timeout: seconds without a record before a range that is not complete
      fails with `TopicReadError` (records below the end must exist).
  """

  def __init__(self, url: str, topic: str,
               start_offsets: Optional[Mapping[int, int]] = None,
               end_offsets: Optional[Mapping[int, int]] = None,
               timeout: float = 30.0, label: Optional[str] = None):
    super().__init__(label)
    _check_url_and_topic(url, topic)
    if isinstance(timeout, bool) or not isinstance(
        timeout, (int, float)) or timeout <= 0:
      raise ValueError(f"`timeout` must be a positive number of seconds. "
                       f"Received: timeout={timeout!r}")
    for name, offsets in (("start_offsets", start_offsets),
                          ("end_offsets", end_offsets)):
      if offsets is not None and (not isinstance(offsets, Mapping) or any(
          isinstance(v, bool) or not isinstance(v, int) or v < 0 or
          isinstance(p, bool) or not isinstance(p, int) or p < 0
          for p, v in offsets.items())):
        raise ValueError(f"`{name}` must map partitions to offsets "
                         f"(integers >= 0). Received: {name}={offsets!r}")
    self._url = url
    self._topic = topic
    self._start = dict(start_offsets or {})
    self._end = None if end_offsets is None else dict(end_offsets)
    self._timeout = float(timeout)

  def ranges(self):
    """`[(topic, partition, start, end)]` this transform reads."""
    end = self._end
    if end is None:
      transport = streams.open_transport(self._url)
      end = {p: o for (t, p), o in transport.end_offsets(
          [self._topic]).items() if t == self._topic}
    for partition, start in self._start.items():
      if partition not in end:
        raise ValueError(f"`start_offsets` names partition {partition} "
                         f"of {self._topic!r}, which has none; its "
                         f"partitions: {sorted(end)}")
      if start > end[partition]:
        raise ValueError(f"{self._topic}/{partition}: start offset {start} "
                         f"is after the end offset {end[partition]}")
    return [(self._topic, p, self._start.get(p, 0), o)
            for p, o in sorted(end.items())]

  def expand(self, pbegin):
    return (pbegin
            | "Ranges" >> beam.Create(self.ranges())
            | "Read" >> beam.ParDo(_ReadRangeFn(self._url, self._timeout)))
