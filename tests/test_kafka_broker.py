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
"""The real Kafka broker of scripts/kafka_broker.py, driven by kafka-python.

Uses the fixtures of tests/kafka_fixtures.py: `kafka_broker` (one broker for
the session), `kafka_broker_factory` (a private broker that may be restarted)
and `kafka_topic_prefix`.
"""

import contextlib
import socket
import time

import pytest

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer  # pylint: disable=g-multiple-import
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata, TopicPartition  # pylint: disable=g-multiple-import

NUM_MESSAGES = 100


def _value(i):
  return f"message-{i:03d}".encode()


def _produce(bootstrap_servers, topic, values):
  """Sends `values` with acks=all and idempotence; returns their offsets."""
  producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all",
                           enable_idempotence=True, linger_ms=5,
                           request_timeout_ms=15000)
  try:
    futures = [producer.send(topic, key=b"key", value=v) for v in values]
    producer.flush(timeout=30)
    metadata = [future.get(timeout=30) for future in futures]
  finally:
    producer.close(timeout=10)
  assert {m.topic for m in metadata} == {topic}
  return [(m.partition, m.offset) for m in metadata]


def _consumer(bootstrap_servers, topic, group_id):
  """A group member that commits only when told to."""
  return KafkaConsumer(topic, bootstrap_servers=bootstrap_servers,
                       group_id=group_id, enable_auto_commit=False,
                       auto_offset_reset="earliest",
                       session_timeout_ms=10000, heartbeat_interval_ms=1000)


def _poll(consumer, count, timeout=30.0):
  """Polls until `count` records have arrived (or fails after `timeout`)."""
  records = []
  deadline = time.monotonic() + timeout
  while len(records) < count:
    assert time.monotonic() < deadline, (
        f"got {len(records)} of {count} records in {timeout}s")
    batches = consumer.poll(timeout_ms=500, max_records=count - len(records))
    for partition_records in batches.values():
      records.extend(partition_records)
  return records


def test_produce_and_consume_in_order_with_explicit_commit(kafka_broker,
                                                          kafka_topic_prefix):
  servers = kafka_broker.bootstrap_servers
  topic = kafka_topic_prefix + "events"  # created on first use by the broker
  group = kafka_topic_prefix + "group"
  values = [_value(i) for i in range(NUM_MESSAGES)]

  # The auto-created topic has one partition (num.partitions=1), so the
  # idempotent producer's messages get offsets 0..99 in send order.
  assert _produce(servers, topic, values) == [
      (0, i) for i in range(NUM_MESSAGES)]

  tp = TopicPartition(topic, 0)
  consumer = _consumer(servers, topic, group)
  try:
    records = _poll(consumer, NUM_MESSAGES)
    assert [r.value for r in records] == values
    assert [r.offset for r in records] == list(range(NUM_MESSAGES))
    assert {r.key for r in records} == {b"key"}
    assert consumer.committed(tp) is None  # no auto-commit happened
    consumer.commit()
    assert consumer.committed(tp) == NUM_MESSAGES
  finally:
    consumer.close()

  # The commit is stored by the broker's group coordinator, not the client.
  observer = KafkaConsumer(bootstrap_servers=servers, group_id=group,
                           enable_auto_commit=False)
  try:
    assert observer.committed(tp) == NUM_MESSAGES
  finally:
    observer.close()


def test_committed_offset_and_messages_survive_restart(kafka_broker_factory,
                                                       kafka_topic_prefix):
  broker = kafka_broker_factory()  # private: restarting it disturbs no one
  servers = broker.bootstrap_servers
  topic = kafka_topic_prefix + "events"
  group = kafka_topic_prefix + "group"
  tp = TopicPartition(topic, 0)
  values = [_value(i) for i in range(NUM_MESSAGES)]
  half = NUM_MESSAGES // 2

  admin = KafkaAdminClient(bootstrap_servers=servers)
  try:
    admin.create_topics([NewTopic(topic, num_partitions=1,
                                  replication_factor=1)])
  finally:
    admin.close()
  assert _produce(servers, topic, values) == [
      (0, i) for i in range(NUM_MESSAGES)]

  consumer = _consumer(servers, topic, group)
  try:
    records = _poll(consumer, half)
    assert [r.value for r in records] == values[:half]
    consumer.commit({tp: OffsetAndMetadata(half, "", -1)})
    assert consumer.committed(tp) == half
  finally:
    consumer.close()

  ports = (broker.port, broker.controller_port)
  pid = broker.pid
  broker.restart()
  assert broker.is_running() and broker.pid != pid
  assert (broker.port, broker.controller_port) == ports
  assert broker.bootstrap_servers == servers

  # A new member of the same group resumes right after the committed offset.
  consumer = _consumer(servers, topic, group)
  try:
    assert consumer.committed(tp) == half
    records = _poll(consumer, NUM_MESSAGES - half)
    assert [r.offset for r in records] == list(range(half, NUM_MESSAGES))
    assert [r.value for r in records] == values[half:]
  finally:
    consumer.close()

  # Every message is still on disk, and the restarted broker takes writes.
  assert _produce(servers, topic, [_value(NUM_MESSAGES)]) == [
      (0, NUM_MESSAGES)]
  reader = _consumer(servers, topic, kafka_topic_prefix + "reader")
  try:
    records = _poll(reader, NUM_MESSAGES + 1)
    assert [r.value for r in records] == values + [_value(NUM_MESSAGES)]
  finally:
    reader.close()


def _non_loopback_ipv4_addresses():
  """This machine's IPv4 addresses outside 127.0.0.0/8 (best effort)."""
  found = set()
  with contextlib.suppress(OSError):
    for info in socket.getaddrinfo(socket.gethostname(), None,
                                   socket.AF_INET):
      found.add(info[4][0])
  # The address of the default route; UDP connect() sends no packet.
  with contextlib.suppress(OSError):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
      sock.connect(("192.0.2.1", 9))  # TEST-NET-1
      found.add(sock.getsockname()[0])
  # Every interface's address (Linux: SIOCGIFADDR).
  with contextlib.suppress(ImportError, OSError, AttributeError):
    import fcntl  # pylint: disable=g-import-not-at-top
    import struct  # pylint: disable=g-import-not-at-top
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
      for _, name in socket.if_nameindex():
        with contextlib.suppress(OSError):
          request = struct.pack("256s", name.encode()[:15])
          reply = fcntl.ioctl(sock.fileno(), 0x8915, request)  # SIOCGIFADDR
          found.add(socket.inet_ntoa(reply[20:24]))
  return sorted(a for a in found
                if not a.startswith("127.") and a != "0.0.0.0")


def _connects(host, port):
  try:
    with socket.create_connection((host, port), timeout=2):
      return True
  except OSError:  # refused, unreachable or timed out
    return False


def test_broker_binds_loopback_only(kafka_broker):
  ports = (kafka_broker.port, kafka_broker.controller_port)
  for port in ports:
    assert _connects("127.0.0.1", port), f"127.0.0.1:{port} refuses"
  addresses = _non_loopback_ipv4_addresses()
  if not addresses:
    pytest.skip("this machine has no non-loopback IPv4 address to check that "
                "the broker does not listen there")
  reachable = [f"{a}:{p}" for a in addresses for p in ports if _connects(a, p)]
  assert not reachable, f"the broker also listens on {reachable}"
