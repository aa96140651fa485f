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
"""Events in and examples out: parsing, the example schema, file I/O.

The joined examples are `tf.train.Example`s with these features (the
`examples` topic and the batch store hold them serialized):

| feature | type | meaning |
|---|---|---|
| `request_id` | bytes | the request that served the impression |
| `user_id`, `item_id` | bytes | ids as text (`str(id)`) |
| `event_time` | int64 | impression time, whole seconds since the epoch |
| `label` | float | 1 if a positive action happened in the window |
| `action_<type>` | float | 1 if an action of `<type>` happened |
| `sample_rate` | float | probability the example was kept (negatives) |
| any impression feature | int64 / float / bytes | from `features` |

`tm.online.DEFAULT_FEATURE_SPEC` parses the first five; add the others to
the trainer's feature spec to use them.
"""

import json
import math
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystem import CompressionTypes
import tensorflow as tf

from tfrs_monolith import streams

__all__ = ["ParseEvents", "ReadEvents", "ToExample", "WriteExamples",
           "WriteDeadLetters", "to_example", "DEAD_LETTER",
           "RESERVED_FEATURES"]

DEAD_LETTER = "dead_letter"
METRICS_NAMESPACE = "tfrs_monolith.events"
RESERVED_FEATURES = ("request_id", "user_id", "item_id", "event_time",
                     "label", "sample_rate")
_PARSERS = {"impression": streams.parse_impression,
            "action": streams.parse_action}


def _check_features(features: Mapping[str, Any]):
  """Raises MalformedMessage unless `features` can become Example features."""
  for name, value in features.items():
    if name in RESERVED_FEATURES or name.startswith("action_"):
      raise streams.MalformedMessage(
          f"bad field: impression feature {name!r} is a reserved name")
    values = value if isinstance(value, list) else [value]
    kinds = set()
    for v in values:
      if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise streams.MalformedMessage(
            f"bad field: impression feature {name!r} must be a number, "
            f"string or list of them, got {value!r}")
      if isinstance(v, float) and not math.isfinite(v):
        raise streams.MalformedMessage(
            f"bad field: impression feature {name!r} is not finite: "
            f"{value!r}")
      if isinstance(v, int) and not -(1 << 63) <= v < (1 << 63):
        raise streams.MalformedMessage(
            f"bad field: impression feature {name!r} must fit in int64, "
            f"got {v!r}")
      kinds.add(str if isinstance(v, str) else
                float if isinstance(v, float) else int)
    if len(kinds) > 1 and kinds != {int, float}:
      raise streams.MalformedMessage(
          f"bad field: impression feature {name!r} mixes strings and "
          f"numbers: {value!r}")


class _ParseFn(beam.DoFn):

  def __init__(self, kind, source, timestamped):
    super().__init__()
    self._kind = kind
    self._source = source
    self._timestamped = timestamped
    self._parsed = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                f"{kind}s_parsed")
    self._dead = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                              f"{kind}s_dead_lettered")

  def process(self, element):
    key = None
    if isinstance(element, tuple):      # (key, value), as Kafka reads give.
      key, element = element
    value = element.encode("utf-8") if isinstance(element, str) else element
    try:
      event = _PARSERS[self._kind](value)
      if self._kind == "impression":
        _check_features(event["features"])
    except streams.MalformedMessage as error:
      self._dead.inc()
      record = streams.Record(topic=self._source, partition=None,
                              offset=None, key=key, value=value,
                              timestamp_ms=None)
      yield pvalue.TaggedOutput(DEAD_LETTER,
                                streams.dead_letter(record, str(error)))
      return
    self._parsed.inc()
    if self._timestamped:
      yield beam.window.TimestampedValue(event, event["event_time"])
    else:
      yield event


class ParseEvents(beam.PTransform):
  """JSON event messages -> event dicts; malformed ones to dead letters.

  Input: bytes or str messages, or `(key, value)` pairs as Kafka reads give
  them. Output: a `DoOutputsTuple` with `events` (the parsed dicts, see
  `tm.streams.parse_impression` / `parse_action`) and `dead_letter` (JSON
  dead letters, as `tm.streams.dead_letter` writes them: source, reason,
  original value).

  Args:
    kind: "impression" or "action".
    source: the name recorded in dead letters (a topic or file pattern).
    timestamped: give each event its `event_time` as Beam timestamp (needed
      by the streaming join).
  """

  def __init__(self, kind: str, source: Optional[str] = None,
               timestamped: bool = False):
    super().__init__()
    if kind not in _PARSERS:
      raise ValueError(f"`kind` must be one of {sorted(_PARSERS)}. "
                       f"Received: kind={kind!r}")
    self._kind = kind
    self._source = source or f"{kind}s"
    self._timestamped = timestamped

  def expand(self, messages):
    return messages | "Parse" >> beam.ParDo(
        _ParseFn(self._kind, self._source, self._timestamped)).with_outputs(
            DEAD_LETTER, main="events")


class ReadEvents(beam.PTransform):
  """Event messages from files: JSON lines or TFRecord (one JSON each).

  Args:
    file_pattern: files to read (a glob; `.gz` files are decompressed).
    file_format: "jsonl", "tfrecord", or "auto" (TFRecord if the name has
      `.tfrecord`, JSON lines otherwise).
  """

  def __init__(self, file_pattern: str, file_format: str = "auto"):
    super().__init__()
    if file_format not in ("auto", "jsonl", "tfrecord"):
      raise ValueError("`file_format` must be 'auto', 'jsonl' or 'tfrecord'. "
                       f"Received: file_format={file_format!r}")
    if file_format == "auto":
      file_format = "tfrecord" if ".tfrecord" in file_pattern else "jsonl"
    self._pattern = file_pattern
    self._format = file_format

  def expand(self, pipeline):
    if self._format == "tfrecord":
      return pipeline | "ReadTFRecord" >> beam.io.ReadFromTFRecord(
          self._pattern)
    return (pipeline
            | "ReadLines" >> beam.io.ReadFromText(self._pattern)
            | "DropBlank" >> beam.Filter(lambda line: line.strip() != ""))


def _set(feature, values: Iterable[Union[int, float, str, bytes]]):
  """Fills the `tf.train.Feature` `feature` with `values` (one kind)."""
  values = list(values)
  # bool is an int, but a bool feature is not an int64 one.
  if values and all(isinstance(v, int) and not isinstance(v, bool)
                    for v in values):
    feature.int64_list.value.extend(values)
  elif values and all(isinstance(v, (str, bytes)) for v in values):
    feature.bytes_list.value.extend(
        v.encode("utf-8") if isinstance(v, str) else v for v in values)
  else:
    feature.float_list.value.extend(values)


def to_example(joined: Dict[str, Any]) -> tf.train.Example:
  """The `tf.train.Example` of a joined example dict (schema above)."""
  example = tf.train.Example()
  feature = example.features.feature
  feature["request_id"].bytes_list.value.append(
      joined["request_id"].encode("utf-8"))
  feature["user_id"].bytes_list.value.append(joined["user_id"].encode("utf-8"))
  feature["item_id"].bytes_list.value.append(joined["item_id"].encode("utf-8"))
  feature["event_time"].int64_list.value.append(int(joined["event_time"]))
  feature["label"].float_list.value.append(float(joined["label"]))
  feature["sample_rate"].float_list.value.append(float(joined["sample_rate"]))
  for kind, value in joined["actions"].items():
    feature[f"action_{kind}"].float_list.value.append(float(value))
  for name, value in joined["features"].items():
    _set(feature[name], value if isinstance(value, list) else [value])
  return example


class ToExample(beam.PTransform):
  """Joined example dicts -> serialized `tf.train.Example`s."""

  def expand(self, joined):
    return joined | "Serialize" >> beam.Map(
        lambda e: to_example(e).SerializeToString())


class WriteExamples(beam.PTransform):
  """Serialized examples -> gzip TFRecord shards `<prefix>-SSSSS-of-NNNNN`.

  Args:
    file_path_prefix: where the shards go (a directory and a file prefix).
    num_shards: 0 lets the runner choose.
  """

  def __init__(self, file_path_prefix: str, num_shards: int = 0):
    super().__init__()
    self._prefix = file_path_prefix
    self._num_shards = num_shards

  def expand(self, serialized):
    return serialized | "WriteTFRecord" >> beam.io.WriteToTFRecord(
        self._prefix, file_name_suffix=".tfrecord.gz",
        num_shards=self._num_shards,
        compression_type=CompressionTypes.GZIP)


class WriteDeadLetters(beam.PTransform):
  """Dead letters (JSON bytes) or unjoined events -> JSON lines files."""

  def __init__(self, file_path_prefix: str):
    super().__init__()
    self._prefix = file_path_prefix

  def expand(self, letters):
    return (letters
            | "ToText" >> beam.Map(
                lambda v: v.decode("utf-8") if isinstance(v, bytes) else
                json.dumps(v, sort_keys=True, default=str))
            | "WriteLines" >> beam.io.WriteToText(
                self._prefix, file_name_suffix=".jsonl"))
