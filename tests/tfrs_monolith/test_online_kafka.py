"""The online trainer against the project's real Kafka broker."""

import json
import os
import signal
import subprocess
import sys
import time

import kafka
import pytest
import tensorflow as tf

import online_model
from tfrs_monolith import online
from tfrs_monolith import streams


def _topics(prefix):
  return streams.Topics(examples=f"{prefix}examples",
                        patches=f"{prefix}patches",
                        dead_letters=f"{prefix}dead")


def _produce(transport, topic, values):
  transport.create_topics([topic])
  with transport.producer() as producer:
    for value in values:
      producer.send(topic, value)


def _read_all(transport, topic, group):
  with transport.consumer([topic], group) as consumer:
    records, batch = [], consumer.poll(100_000, 2.0)
    while batch:
      records += batch
      batch = consumer.poll(100_000, 1.0)
  return records


def _produce_tombstone(bootstrap, topic):
  """A message with no value, as any Kafka client (not ours) may write."""
  producer = kafka.KafkaProducer(bootstrap_servers=bootstrap)
  try:
    producer.send(topic, value=None, key=b"tombstone").get(timeout=60)
  finally:
    producer.close()


def test_end_to_end_through_kafka(kafka_broker, kafka_topic_prefix,
                                  tmp_path):
  transport = streams.open_transport(
      f"kafka://{kafka_broker.bootstrap_servers}")
  topics = _topics(kafka_topic_prefix)
  values = online_model.examples(1000, seed=11)
  _produce(transport, topics.examples, values[:500] + [b"\x08poison"])
  _produce_tombstone(kafka_broker.bootstrap_servers, topics.examples)
  _produce(transport, topics.examples, values[500:])
  with online.OnlineTrainer(
      online_model.make_model(), transport, str(tmp_path / "ckpt"),
      topics=topics, group_id=f"{kafka_topic_prefix}trainer",
      batch_size=100, sparse_interval=0.5, poll_timeout=0.2) as trainer:
    stats = trainer.run(max_examples=1000, idle_timeout=60.0)
    model = trainer.model
    assert stats.examples == 1000
    assert trainer.position() == {f"{topics.examples}/0": 1002}
    assert trainer.metrics()["lag_examples"] == 0
    _produce(transport, topics.examples, values[:7])
    assert trainer.metrics()["lag_examples"] == 7
  letters = [streams.DeadLetterQueue.decode(r.value) for r in
             _read_all(transport, topics.dead_letters, "audit")]
  assert [(l["offset"], l["key"], l["value"]) for l in letters] == [
      (500, None, b"\x08poison"), (501, b"tombstone", None)]
  replicas = online_model.replica_tables()
  online_model.apply_patch_records(
      _read_all(transport, topics.patches, "replica"), replicas)
  assert online_model.assert_replica_equal(model.user, replicas["user"]) == 60
  online_model.assert_replica_equal(model.item, replicas["item"])


def _start_trainer(bootstrap, topics, checkpoint_dir, log_path, idle,
                   max_examples=None):
  factory = os.path.join(os.path.dirname(online_model.__file__),
                         "online_model.py") + ":make_model"
  log = open(log_path, "ab")  # pylint: disable=consider-using-with
  return subprocess.Popen([
      sys.executable, "-m", "tfrs_monolith.cli", "train-online",
      "--transport", f"kafka://{bootstrap}", "--model", factory,
      "--checkpoint-dir", checkpoint_dir, "--model-name", "ranker",
      "--examples-topic", topics.examples, "--patches-topic", topics.patches,
      "--dead-letter-topic", topics.dead_letters,
      "--group-id", f"{topics.examples}-trainer", "--batch-size", "20",
      "--sparse-interval", "0.3", "--idle-timeout", str(idle),
      "--log-interval", "1"] + (
          ["--max-examples", str(max_examples)] if max_examples else []),
      stdout=subprocess.PIPE, stderr=log)


def _checkpointed(checkpoint_dir, topic):
  """The input offset of `topic` in the latest checkpoint (0 if none yet)."""
  path = tf.train.latest_checkpoint(checkpoint_dir)
  if not path:
    return 0
  try:
    offsets = tf.train.load_checkpoint(path).get_tensor(
        "input_offsets/.ATTRIBUTES/VARIABLE_VALUE")
  except tf.errors.OpError:  # Written or pruned as we read.
    return 0
  # The initial checkpoint's offsets are empty: the consumer's are used.
  return json.loads(offsets or b"{}").get(f"{topic}/0", 0)


def test_sigkill_and_restart_lose_nothing(kafka_broker, kafka_topic_prefix,
                                          tmp_path):
  transport = streams.open_transport(
      f"kafka://{kafka_broker.bootstrap_servers}")
  topics = _topics(kafka_topic_prefix)
  total = 4000
  _produce(transport, topics.examples, online_model.examples(total, seed=3))
  checkpoint_dir = str(tmp_path / "ckpt")
  log_path = str(tmp_path / "trainer.log")
  first = _start_trainer(kafka_broker.bootstrap_servers, topics,
                         checkpoint_dir, log_path, idle=30)
  # Mid-stream: once a checkpoint holds 400 trained examples, many steps
  # and patches in and 3,600 examples from the end (a sync every 0.3 s).
  deadline = time.monotonic() + 180
  while _checkpointed(checkpoint_dir, topics.examples) < 400:
    assert first.poll() is None and time.monotonic() < deadline, (
        open(log_path).read()[-3000:])
    time.sleep(0.01)
  first.send_signal(signal.SIGKILL)
  first.wait(30)
  first.stdout.close()
  killed_at = _checkpointed(checkpoint_dir, topics.examples)
  assert 400 <= killed_at < total, "the trainer was not killed mid-stream"

  # It stops once it has trained what is left after the checkpoint (the
  # idle timeout is only a guard): a repeated example would show as final
  # offsets short of the end of the topic.
  second = _start_trainer(kafka_broker.bootstrap_servers, topics,
                          checkpoint_dir, log_path, idle=60,
                          max_examples=total - killed_at)
  out, _ = second.communicate(timeout=300)
  assert second.returncode == 0, open(log_path).read()[-3000:]
  summary = json.loads(out.decode().strip().splitlines()[-1])
  # Every example after the checkpoint is trained again; none is lost.
  assert summary["examples"] == total - killed_at

  # The final state, as the trainer checkpointed it.
  model = online_model.make_model()
  for table in online.models.find_tables(model):
    table.build(None)
  tf.train.Checkpoint(model=model).restore(
      tf.train.latest_checkpoint(checkpoint_dir)).expect_partial()
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
      checkpoint_dir))
  assert json.loads(reader.get_tensor(
      "input_offsets/.ATTRIBUTES/VARIABLE_VALUE")) == {
          f"{topics.examples}/0": total}
  # A replica that applied every patch, the killed run's included, in
  # topic order, equals it.
  replicas = online_model.replica_tables()
  patches = online_model.apply_patch_records(
      _read_all(transport, topics.patches, "replica"), replicas)
  sequences = [p.sequence for p in patches if p.table_name == "user"]
  assert len(set(sequences)) == len(sequences), "a sequence was reused"
  assert online_model.assert_replica_equal(model.user, replicas["user"]) == 60
  online_model.assert_replica_equal(model.item, replicas["item"])


def test_broker_restart_during_consumption(kafka_broker_factory, tmp_path):
  broker = kafka_broker_factory()
  transport = streams.open_transport(f"kafka://{broker.bootstrap_servers}")
  topics = _topics("restart-")
  values = online_model.examples(1200, seed=8)
  _produce(transport, topics.examples, values[:600])
  with online.OnlineTrainer(
      online_model.make_model(), transport, str(tmp_path / "ckpt"),
      topics=topics, batch_size=100, sparse_interval=0.5,
      poll_timeout=0.2) as trainer:
    trainer.run(max_examples=400)
    observer = transport.consumer([topics.examples], "restart-observer")
    broker.stop()
    # With the broker away, the best-effort calls (lag metrics, a commit of
    # a position kept elsewhere too) give up within seconds instead of
    # waiting out the outage (KAFKA_OUTAGE_SECONDS: 300 s).
    start = time.monotonic()
    assert "lag_examples" not in trainer.metrics()
    with pytest.raises(kafka.errors.KafkaError):
      observer.commit({(topics.examples, 0): 1},
                      timeout=streams.KAFKA_BEST_EFFORT_SECONDS)
    assert time.monotonic() - start < 60
    observer.close()
    broker.start()
    _produce(transport, topics.examples, values[600:])
    # Until all are trained (the consumer may take a few seconds to find the
    # broker again); the idle timeout only guards against a hang.
    stats = trainer.run(max_examples=1200, idle_timeout=60.0)
    assert stats.examples == 1200       # Each example exactly once.
    assert trainer.position() == {f"{topics.examples}/0": 1200}
    model = trainer.model
  replicas = online_model.replica_tables()
  online_model.apply_patch_records(
      _read_all(transport, topics.patches, "replica"), replicas)
  online_model.assert_replica_equal(model.user, replicas["user"])
