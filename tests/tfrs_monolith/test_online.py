"""The online trainer over the file transport, export and the CLI."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import online_model
import saved_model_checks
import tfrs_monolith as tm
from tfrs_monolith import cli
from tfrs_monolith import export
from tfrs_monolith import online
from tfrs_monolith import streams


def _produce(transport, values, topic="examples"):
  with transport.producer() as producer:
    for value in values:
      producer.send(topic, value)


def _trainer(transport, checkpoint_dir, **kwargs):
  kwargs.setdefault("batch_size", 128)
  kwargs.setdefault("sparse_interval", 0.3)
  kwargs.setdefault("poll_timeout", 0.1)
  return online.OnlineTrainer(online_model.make_model(), transport,
                              str(checkpoint_dir), model_name="ranker",
                              **kwargs)


def _patch_records(transport):
  with transport.consumer(["patches"], "reader") as consumer:
    records, batch = [], consumer.poll(100_000, 0.5)
    while batch:
      records += batch
      batch = consumer.poll(100_000, 0.2)
  return records


def test_replica_from_patches_equals_trainer(tmp_path):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  poison = [b"\xff not a proto", online_model.example(1, 2, 0.5, 7)[:-6]]
  values = online_model.examples(1500)
  _produce(transport, values[:700] + poison + values[700:])
  with _trainer(transport, tmp_path / "ckpt") as trainer:
    stats = trainer.run(idle_timeout=1.0)
    assert stats.examples == 1500
    assert trainer.position() == {"examples/0": 1502}
    dead = trainer.metrics()["dead_letters"]
    model = trainer.model
  assert dead == 2
  with transport.consumer(["dead-letters"], "audit") as consumer:
    letters = [streams.DeadLetterQueue.decode(r.value)
               for r in consumer.poll(10, 1.0)]
  assert [l["offset"] for l in letters] == [700, 701]
  assert letters[0]["value"] == poison[0]
  assert all(l["reason"] for l in letters)

  replicas = online_model.replica_tables()
  patches = online_model.apply_patch_records(_patch_records(transport),
                                             replicas)
  assert patches
  for table in ("user", "item"):
    sequences = [p.sequence for p in patches if p.table_name == table]
    assert sequences == list(range(1, len(sequences) + 1))
    assert patches[-1].watermark == {"examples/0": 1502}
  assert online_model.assert_replica_equal(model.user, replicas["user"]) == 60
  # Items need two sightings (min_count=2); the replica has exactly those.
  assert online_model.assert_replica_equal(model.item, replicas["item"]) > 80


def test_oversize_examples_and_tombstones_are_dead_lettered(tmp_path):
  # Both are refused before parsing, in a batch of good examples too (one
  # op parses such a batch; these must not slip through it).
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  values = online_model.examples(300)
  big = tf.train.Example.FromString(values[0])
  big.features.feature["padding"].bytes_list.value.append(
      b"x" * streams.MAX_EXAMPLE_BYTES)
  _produce(transport, values[:100] + [big.SerializeToString()] + values[100:])
  with _trainer(transport, tmp_path / "ckpt") as trainer:
    assert trainer.run(idle_timeout=1.0).examples == 300
    # A tombstone can come only from Kafka (the file log stores bytes).
    tombstone = streams.Record("examples", 0, 301, None, None, 0)
    assert trainer.train_batch([tombstone] + [
        streams.Record("examples", 0, 302 + i, None, v, 0)
        for i, v in enumerate(values[:20])])
    assert trainer.stats.examples == 320
    assert trainer.metrics()["dead_letters"] == 2
  with transport.consumer(["dead-letters"], "audit") as consumer:
    letters = [streams.DeadLetterQueue.decode(r.value)
               for r in consumer.poll(10, 1.0)]
  assert [(l["offset"], l["reason"].split(":")[0]) for l in letters] == [
      (100, "oversize example"), (301, "no value")]
  assert letters[1]["value"] is None


def test_restart_resumes_from_checkpoint(tmp_path):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  values = online_model.examples(1200, seed=4)
  _produce(transport, values[:800])
  with _trainer(transport, tmp_path / "ckpt") as first:
    first.run(max_examples=500)
    assert first.position() == {"examples/0": 500}
    sequences = {t.name: int(t.patch_sequence.numpy()) for t in first.tables}
  _produce(transport, values[800:])
  with _trainer(transport, tmp_path / "ckpt") as second:
    assert second.restored_from is not None
    assert second.position() == {"examples/0": 500}
    stats = second.run(idle_timeout=1.0)
    assert stats.examples == 700        # Exactly the rest, nothing twice.
    assert {t.name: int(t.patch_sequence.numpy()) > sequences[t.name]
            for t in second.tables} == {"user": True, "item": True}
    model = second.model
  replicas = online_model.replica_tables()
  online_model.apply_patch_records(_patch_records(transport), replicas)
  for table in ("user", "item"):
    online_model.assert_replica_equal(getattr(model, table), replicas[table])


def test_expiry_runs_on_event_time(tmp_path):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  model = online_model.Ranking(ttl=100)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
  # Item 5 is seen at t=1000 only; the stream then moves on to t=5000.
  _produce(transport, [online_model.example(1, 5, 1.0, 1000)] +
           [online_model.example(1, 6, 1.0, 5000 + k) for k in range(10)])
  with online.OnlineTrainer(model, transport, str(tmp_path / "ckpt"),
                            batch_size=1, sparse_interval=100) as trainer:
    trainer.run(idle_timeout=0.5)
  replicas = online_model.replica_tables()
  patches = online_model.apply_patch_records(_patch_records(transport),
                                             replicas)
  key5 = tm.hashing.to_keys(["5"]).numpy()
  assert model.item.table.lookup(key5).numpy()[0] == -1
  item_patch = [p for p in patches if p.table_name == "item"][-1]
  np.testing.assert_array_equal(item_patch.evicted, key5)


def test_export_applies_patches_in_a_tf1_session(tmp_path):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  _produce(transport, online_model.examples(300, seed=2))
  with _trainer(transport, tmp_path / "ckpt",
                export_dir=str(tmp_path / "base"),
                export_fn=export.export_saved_model) as trainer:
    trainer.run(idle_timeout=0.5)
    path = trainer.export()
    model = trainer.model
  assert os.path.basename(path).isdigit()
  with open(os.path.join(path, export.WATERMARK_FILE)) as f:
    watermark = json.load(f)["watermark"]
  assert watermark == {t.name: int(t.patch_sequence.numpy())
                       for t in tm.models.find_tables(model)}
  ops = saved_model_checks.assert_servable(path,
                                           ("serving_default", "apply_patch"))
  assert {"ResourceScatterUpdate", "While"} <= ops

  user = tm.hashing.to_keys(["7"]).numpy()[0]
  pairs = {"user_id": tf.constant(["7", "8"]),
           "item_id": tf.constant(["3", "3"])}
  expected = model(pairs).numpy()[:, 0]
  with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    serve = graph.signature_def["serving_default"]
    patch = graph.signature_def["apply_patch"]

    def score(users):
      return sess.run(serve.outputs["outputs"].name, {
          serve.inputs["user_id"].name: users,
          serve.inputs["item_id"].name: ["3"] * len(users)})[:, 0]

    before = score(["7", "8"])
    changed = sess.run(patch.outputs["changed"].name, {
        patch.inputs["table"].name: "user",
        patch.inputs["keys"].name: [user],
        patch.inputs["values"].name: np.full([1, 8], 0.5, np.float32),
        patch.inputs["evicted"].name: np.zeros([0], np.int64),
        patch.inputs["full"].name: False,
        patch.inputs["created_at"].name: 0,
    })
    assert changed == 1
    after = score(["7", "8"])
  np.testing.assert_allclose(before, expected, rtol=1e-5)
  assert after[0] != before[0] and after[1] == before[1]
  model.user.apply_patch(tm.EmbeddingPatch(
      keys=[user], values=np.full([1, 8], 0.5, np.float32)))
  np.testing.assert_allclose(after, model(pairs).numpy()[:, 0], rtol=1e-5)


def test_cli_trains_and_prints_metrics(tmp_path, capsys):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  _produce(transport, online_model.examples(200, seed=5))
  factory = os.path.join(os.path.dirname(online_model.__file__),
                         "online_model.py") + ":make_model"
  code = cli.main(["train-online", "--transport", transport.url,
                   "--model", factory, "--checkpoint-dir",
                   str(tmp_path / "ckpt"), "--idle-timeout", "0.5",
                   "--sparse-interval", "0.2", "--batch-size", "64"])
  assert code == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["examples"] == 200 and summary["checkpoints"] >= 1
  assert summary["user/size"] > 0


def test_metrics_and_tensorboard_summaries(tmp_path):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  # Batches of two: items a, b, then a, b again. min_count=2 admits each
  # at its second sighting, so half of the item lookups find no row.
  items = np.tile(np.arange(100).reshape(50, 1, 2), [1, 2, 1]).ravel()
  values = [online_model.example(k % 5, item, 1.0, 100 + k)
            for k, item in enumerate(items)]
  _produce(transport, values)
  with _trainer(transport, tmp_path / "ckpt", batch_size=2,
                summary_dir=str(tmp_path / "tb"), log_interval=0.01) as trainer:
    trainer.run(idle_timeout=0.5)
    figures = trainer.metrics()     # Nothing new since the last log.
    assert figures["lag_examples"] == 0
    _produce(transport, values[:3])
    assert trainer.metrics()["lag_examples"] == 3
  assert figures["examples"] == 200 and figures["item/size"] == 100
  assert np.isnan(figures["item/admission_rate"])
  # 100 ids without a row never fill the item sketch's window (4,096);
  # the user table (min_count=1) has no sketch.
  assert figures["item/admission_halvings"] == 0
  assert "user/admission_halvings" not in figures
  model = trainer.model
  assert model.item.training_ids.numpy() == 200
  assert model.item.training_misses.numpy() == 100
  assert model.user.training_misses.numpy() == 0
  tags = set()
  for name in os.listdir(tmp_path / "tb"):
    for event in tf.compat.v1.train.summary_iterator(
        str(tmp_path / "tb" / name)):
      tags.update(v.tag for v in event.summary.value)
  assert {"loss", "examples_per_s", "item/admission_rate", "user/size",
          "lag_examples", "patch_bytes"} <= tags


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size=0"),
    ({"sparse_interval": -1}, "sparse_interval=-1"),
    ({"time_feature": "ts"}, "'ts' is not in `feature_spec`"),
])
def test_invalid_arguments(tmp_path, kwargs, message):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  with pytest.raises(ValueError, match=message):
    _trainer(transport, tmp_path / "ckpt", **kwargs)


def test_cli_rejects_a_bad_model_spec():
  with pytest.raises(ValueError, match="module:function"):
    cli.load_factory("no_colon_here")
