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
"""Writing a PCollection to a topic through `tm.streams` transports.

`WriteToTopic` sends each element with the project's own Kafka producer
(kafka-python: `acks=all`, idempotent) or to a `file://` log, from any Beam
runner, the local ones included; it needs no Java. Each bundle is flushed
before it completes, so an element is never lost; a retried bundle may send
some elements twice (at-least-once, as Beam's own Kafka sink without
exactly-once mode).
"""

from typing import Optional

import apache_beam as beam

from tfrs_monolith import streams

__all__ = ["WriteToTopic"]

METRICS_NAMESPACE = "tfrs_monolith.topics"


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
    if not isinstance(url, str) or "://" not in url:
      raise ValueError(f"`url` must be kafka://host:port or file:///dir. "
                       f"Received: url={url!r}")
    if not isinstance(topic, str) or not topic:
      raise ValueError(f"`topic` must be a non-empty string. Received: "
                       f"topic={topic!r}")
    self._url = url
    self._topic = topic

  def expand(self, values):
    return values | "Send" >> beam.ParDo(_WriteFn(self._url, self._topic))
