"""Stream I/O: the file transport, dead letters and event schemas."""

import json
import os

import pytest

from tfrs_monolith import streams


def test_file_transport_round_trip_commit_and_seek(tmp_path):
  transport = streams.open_transport(f"file://{tmp_path}/topics")
  assert isinstance(transport, streams.FileTransport)
  transport.create_topics(["events"])
  with transport.producer() as producer:
    for i in range(5):
      producer.send("events", f"v{i}".encode(), key=None if i % 2 else b"k")
  with transport.consumer(["events"], "group") as consumer:
    records = consumer.poll(3, 0.1)
    assert [(r.offset, r.value, r.key) for r in records] == [
        (0, b"v0", b"k"), (1, b"v1", None), (2, b"v2", b"k")]
    consumer.commit(consumer.position())
  with transport.consumer(["events"], "group") as consumer:
    assert consumer.committed() == {("events", 0): 3}
    assert [r.value for r in consumer.poll(10, 0.1)] == [b"v3", b"v4"]
    consumer.seek({("events", 0): 1})
    assert [r.offset for r in consumer.poll(10, 0.1)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="offset 9"):
      consumer.seek({("events", 0): 9})
  with transport.consumer(["events"], "other-group") as consumer:
    assert consumer.end_offsets() == {("events", 0): 5}
    assert len(consumer.poll(10, 0.1)) == 5    # From the beginning.
    with transport.producer() as producer:
      producer.send("events", b"v5")
    assert consumer.end_offsets() == {("events", 0): 6}
  assert transport.end_offsets(["events"]) == {("events", 0): 6}


def test_reader_waits_for_a_half_written_record(tmp_path):
  transport = streams.FileTransport(str(tmp_path))
  with transport.producer() as producer:
    producer.send("t", b"complete")
    producer.send("t", b"second")
  path = os.path.join(str(tmp_path), "t.log")
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:-3])                     # The writer is mid-append.
  with transport.consumer(["t"], "g") as consumer:
    assert [r.value for r in consumer.poll(10, 0.1)] == [b"complete"]
    with open(path, "ab") as f:
      f.write(data[-3:])
    assert [r.value for r in consumer.poll(10, 0.5)] == [b"second"]


def test_corruption_is_an_error_not_a_skip(tmp_path):
  transport = streams.FileTransport(str(tmp_path))
  with transport.producer() as producer:
    producer.send("t", b"payload")
  path = os.path.join(str(tmp_path), "t.log")
  data = bytearray(open(path, "rb").read())
  data[-1] ^= 0xFF
  open(path, "wb").write(bytes(data))
  with transport.consumer(["t"], "g") as consumer:
    with pytest.raises(IOError, match="corrupt record at offset 0"):
      consumer.poll(1, 0.1)


def test_dead_letters_keep_the_message_and_reason(tmp_path):
  transport = streams.FileTransport(str(tmp_path))
  record = streams.Record("actions", 0, 41, b"req-1", b"{not json", 0)
  with transport.producer() as producer:
    dead = streams.DeadLetterQueue(producer, "dlq")
    try:
      streams.parse_action(record.value)
    except streams.MalformedMessage as error:
      dead.send(record, str(error))
  assert dead.counts == {"not JSON": 1} and dead.total == 1
  with transport.consumer(["dlq"], "g") as consumer:
    (letter,) = consumer.poll(5, 0.1)
  decoded = streams.DeadLetterQueue.decode(letter.value)
  assert decoded["value"] == b"{not json" and decoded["key"] == b"req-1"
  assert (decoded["topic"], decoded["offset"]) == ("actions", 41)
  assert decoded["reason"].startswith("not JSON")


def test_event_schemas():
  impression = {"request_id": "r1", "user_id": 7, "item_id": "m9",
                "event_time": 1700000000, "features": {"hour": 3}}
  assert streams.parse_impression(streams.encode_event(impression)) == {
      **impression, "event_time": 1700000000.0}
  action = {"request_id": "r1", "item_id": "m9", "action": "click",
            "event_time": 1700000005.5}
  assert streams.parse_action(streams.encode_event(action))["action"] == (
      "click")


@pytest.mark.parametrize("event, message", [
    ({"user_id": 1, "item_id": 2, "event_time": 1}, "no 'request_id'"),
    ({"request_id": "r", "user_id": 1.5, "item_id": 2, "event_time": 1},
     "'user_id' must be str or int, got 1.5"),
    ({"request_id": "r", "user_id": 1, "item_id": 2, "event_time": -3},
     "'event_time' must be a finite number of seconds >= 0, got -3"),
    ({"request_id": "", "user_id": 1, "item_id": 2, "event_time": 1},
     "'request_id' is empty"),
    ([1, 2], "must be a JSON object, got list"),
])
def test_bad_impressions_name_field_and_value(event, message):
  with pytest.raises(streams.MalformedMessage, match=message):
    streams.parse_impression(json.dumps(event).encode())


def test_parse_example_checks_required_features():
  import online_model  # pylint: disable=g-import-not-at-top
  value = online_model.example(1, 2, 0.5, 10)
  assert streams.parse_example(value, ["user_id", "label"]).features
  with pytest.raises(streams.MalformedMessage, match="no 'clicked'"):
    streams.parse_example(value, ["clicked"])
  with pytest.raises(streams.MalformedMessage, match="not a tf.train.Example"):
    streams.parse_example(b"\xff\xff\xff", [])


@pytest.mark.parametrize("url, message", [
    ("http://x", "kafka:// or file://"),
    ("kafka://", "needs host:port"),
    (42, "must be a string"),
])
def test_open_transport_rejects_bad_urls(url, message):
  with pytest.raises((ValueError, TypeError), match=message):
    streams.open_transport(url)


def test_topic_names_are_checked(tmp_path):
  transport = streams.FileTransport(str(tmp_path))
  with pytest.raises(ValueError, match="topic='../x'"):
    transport.create_topics(["../x"])


def test_consumer_calls_outlast_a_broker_outage(monkeypatch):
  from kafka import errors  # pylint: disable=g-import-not-at-top
  calls = []

  def flaky(x):
    calls.append(x)
    if len(calls) < 3:
      raise errors.KafkaConnectionError("111 ECONNREFUSED")
    return x + 1

  monkeypatch.setattr(streams.time, "sleep", lambda seconds: None)
  assert streams._outlasting("reading", flaky, 1) == 2 and len(calls) == 3

  def refused(x):
    raise errors.CommitFailedError("not retriable")

  with pytest.raises(errors.CommitFailedError):
    streams._outlasting("committing", refused, 1)
  # A best-effort call's own budget overrides the outage budget.
  calls.clear()
  with pytest.raises(errors.KafkaConnectionError):
    streams._outlasting("reading", flaky, 1, seconds=0.0)
  assert len(calls) == 1
  monkeypatch.setattr(streams, "KAFKA_OUTAGE_SECONDS", 0.0)
  calls.clear()
  with pytest.raises(errors.KafkaConnectionError):
    streams._outlasting("reading", flaky, 1)
  assert len(calls) == 1
