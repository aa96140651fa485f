"""The streaming joiner writing examples to the real Kafka broker."""

import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing import test_stream
import pytest
import tensorflow as tf

from tfrs_monolith import online
from tfrs_monolith import streams
from tfrs_monolith.beam import join as join_lib
from tfrs_monolith.beam import pipelines
from tfrs_monolith.beam import topics


def _read_all(transport, topic, expected, group):
  records = []
  with transport.consumer([topic], group) as consumer:
    for _ in range(60):
      records += consumer.poll(10_000, 1.0)
      if len(records) >= expected:
        break
    records += consumer.poll(10_000, 0.5)   # Nothing more should come.
  return records


def test_streaming_joiner_to_kafka_feeds_the_trainer_schema(
    kafka_broker, kafka_topic_prefix):
  url = f"kafka://{kafka_broker.bootstrap_servers}"
  examples_topic = f"{kafka_topic_prefix}examples"
  dead_topic = f"{kafka_topic_prefix}dead-letters"
  impressions = [json.dumps({"request_id": f"r{i}", "user_id": i % 5,
                             "item_id": f"m{i % 7}", "event_time": 100 + i})
                 for i in range(40)]
  actions = [json.dumps({"request_id": f"r{i}", "item_id": f"m{i % 7}",
                         "action": "click", "event_time": 110 + i})
             for i in range(0, 40, 4)]
  stream = test_stream.TestStream()
  stream.add_elements([beam.window.TimestampedValue(m.encode(), 100 + i)
                       for i, m in enumerate(impressions)], tag="imp")
  stream.add_elements([beam.window.TimestampedValue(b"{broken", 100)],
                      tag="imp")
  stream.add_elements([beam.window.TimestampedValue(m.encode(), 110 + 4 * i)
                       for i, m in enumerate(actions)], tag="act")
  for tag in ("imp", "act"):
    stream.advance_watermark_to(10_000, tag=tag)
  stream.advance_watermark_to_infinity()

  options = PipelineOptions(runner="BundleBasedDirectRunner")
  options.view_as(StandardOptions).streaming = True
  with test_pipeline.TestPipeline(options=options) as p:
    inputs = p | stream
    outputs = ((inputs["imp"], inputs["act"])
               | pipelines.JoinPipeline(join_lib.JoinConfig(window_seconds=60),
                                        streaming=True))
    outputs["examples"] | "Examples" >> topics.WriteToTopic(url,
                                                             examples_topic)
    outputs["dead_letters"] | "Dead" >> topics.WriteToTopic(url, dead_topic)

  transport = streams.open_transport(url)
  records = _read_all(transport, examples_topic, 40, f"{kafka_topic_prefix}r")
  assert len(records) == 40
  parsed = [tf.io.parse_single_example(r.value, online.DEFAULT_FEATURE_SPEC)
            for r in records]
  labels = {p["user_id"].numpy().decode() + "/" + p["item_id"].numpy().decode()
            + "/" + str(int(p["event_time"])): float(p["label"])
            for p in parsed}
  expected = {f"{i % 5}/m{i % 7}/{100 + i}": 1.0 if i % 4 == 0 else 0.0
              for i in range(40)}
  assert labels == expected
  dead = _read_all(transport, dead_topic, 1, f"{kafka_topic_prefix}d")
  assert [streams.DeadLetterQueue.decode(r.value)["value"]
          for r in dead] == [b"{broken"]


def test_write_to_topic_rejects_bad_arguments():
  with pytest.raises(ValueError, match="url='127.0.0.1:9092'"):
    topics.WriteToTopic("127.0.0.1:9092", "examples")
  with pytest.raises(ValueError, match="topic=''"):
    topics.WriteToTopic("kafka://127.0.0.1:9092", "")


def test_streaming_pipeline_needs_kafka_servers():
  with pytest.raises(ValueError, match="--kafka_bootstrap_servers"):
    pipelines.run(["--streaming"])


def test_batch_pipeline_needs_its_files():
  with pytest.raises(ValueError, match="--impressions, --actions"):
    pipelines.run(["--impressions", "a.jsonl"])
