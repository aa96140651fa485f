"""`ReadFromTopic`: bounded offset ranges of a topic in a batch pipeline."""

import json
import os
import tempfile

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import pytest

from tfrs_monolith import streams
from tfrs_monolith.beam import pipelines
from tfrs_monolith.beam import topics


def _fill(url, topic, n, partitions=1):
  transport = streams.open_transport(url)
  transport.create_topics([topic], partitions=partitions)
  with transport.producer() as producer:
    for i in range(n):
      producer.send(topic, f"v{i}".encode(), key=f"k{i}".encode())
    producer.flush()
  return transport


def _read(url, topic, start=None, end=None, timeout=30.0):
  """What the transform outputs, as a sorted list of (key, value)."""
  with tempfile.TemporaryDirectory() as tmp:
    sink = os.path.join(tmp, "out")
    options = PipelineOptions([], runner=pipelines.DEFAULT_RUNNER)
    with beam.Pipeline(options=options) as p:
      (p | topics.ReadFromTopic(url, topic, start, end, timeout=timeout)
       | beam.Map(lambda kv: json.dumps(
           [None if kv[0] is None else kv[0].decode(), kv[1].decode()]))
       | beam.io.WriteToText(sink, shard_name_template=""))
    with open(sink, encoding="utf-8") as f:
      out = [json.loads(line) for line in f]
  out = [(None if k is None else k.encode(), v.encode()) for k, v in out]
  return sorted(out, key=lambda kv: int(kv[1][1:]))


def test_reads_exactly_the_range_from_a_file_log(tmp_path):
  url = f"file://{tmp_path}"
  _fill(url, "events", 10)
  assert _read(url, "events", {0: 3}, {0: 8}) == [
      (f"k{i}".encode(), f"v{i}".encode()) for i in range(3, 8)]
  # Defaults: from the beginning to the end when the pipeline is built.
  assert len(_read(url, "events")) == 10
  assert _read(url, "events", {0: 10}, {0: 10}) == []


def test_successive_ranges_read_each_record_once(tmp_path):
  url = f"file://{tmp_path}"
  transport = _fill(url, "events", 4)
  first = _read(url, "events", {0: 0}, {0: 4})
  with transport.producer() as producer:
    for i in range(4, 7):
      producer.send("events", f"v{i}".encode())
    producer.flush()
  second = _read(url, "events", {0: 4})
  assert [v for _, v in first + second] == [f"v{i}".encode()
                                            for i in range(7)]


def test_a_range_past_the_end_fails_naming_it(tmp_path):
  url = f"file://{tmp_path}"
  _fill(url, "events", 3)
  with pytest.raises(Exception, match=r"events/0: no record after offset 3"):
    _read(url, "events", {0: 0}, {0: 5}, timeout=1.0)
  with pytest.raises(ValueError, match="start offset 4 is after the end"):
    topics.ReadFromTopic(url, "events", {0: 4}).ranges()
  with pytest.raises(ValueError, match="partition 2"):
    topics.ReadFromTopic(url, "events", {2: 0}).ranges()


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="url='events'"):
    topics.ReadFromTopic("events", "events")
  with pytest.raises(ValueError, match="topic=''"):
    topics.ReadFromTopic("file:///tmp/x", "")
  with pytest.raises(ValueError, match=r"start_offsets=\{0: -1\}"):
    topics.ReadFromTopic("file:///tmp/x", "t", {0: -1})
  with pytest.raises(ValueError, match="timeout=0"):
    topics.ReadFromTopic("file:///tmp/x", "t", timeout=0)


def test_reads_ranges_of_every_partition_from_kafka(kafka_broker,
                                                    kafka_topic_prefix):
  url = f"kafka://{kafka_broker.bootstrap_servers}"
  topic = f"{kafka_topic_prefix}events"
  transport = _fill(url, topic, 40, partitions=2)
  ends = {p: o for (_, p), o in transport.end_offsets([topic]).items()}
  assert sum(ends.values()) == 40 and len(ends) == 2
  everything = _read(url, topic)
  assert sorted(v for _, v in everything) == sorted(
      f"v{i}".encode() for i in range(40))
  # The first two records of each partition are left out.
  rest = _read(url, topic, {0: 2, 1: 2}, ends)
  assert len(rest) == 36
  assert set(rest) < set(everything)
