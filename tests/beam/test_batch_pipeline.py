"""End to end in batch: raw event files -> joiner pipeline -> batch store ->
batch training -> SavedModel version 1 -> the online trainer resumes."""

import glob
import gzip
import json
import os
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

import online_model
import saved_model_checks
from tfrs_monolith import cli
from tfrs_monolith import export
from tfrs_monolith import online
from tfrs_monolith import streams
from tfrs_monolith.beam import pipelines
from tfrs_monolith.beam import training

USERS, ITEMS, REQUESTS = 30, 40, 1500


def _events(seed=0):
  """Impressions (3 items per request) and clicks: user and item parity
  agree -> clicked with probability 0.8, else 0.1."""
  rng = np.random.default_rng(seed)
  impressions, actions = [], []
  for r in range(REQUESTS):
    user = int(rng.integers(USERS))
    t = 1_000_000 + 10 * r
    for item in rng.choice(ITEMS, 3, replace=False):
      impressions.append({"request_id": f"r{r}", "user_id": user,
                          "item_id": f"m{item}", "event_time": t})
      if rng.random() < (0.8 if user % 2 == item % 2 else 0.1):
        actions.append({"request_id": f"r{r}", "item_id": f"m{item}",
                        "action": "click", "event_time": t + 30})
  return impressions, actions


def _write_jsonl(path, events, extra_lines=()):
  with open(path, "w", encoding="utf-8") as f:
    for event in events:
      f.write(json.dumps(event) + "\n")
    for line in extra_lines:
      f.write(line + "\n")


def _read_store(pattern):
  records = []
  for name in sorted(glob.glob(pattern)):
    records += [tf.train.Example.FromString(r.numpy()) for r in
                tf.data.TFRecordDataset(name, compression_type="GZIP")]
  return records


def _feature(example, name):
  feature = example.features.feature[name]
  kind = feature.WhichOneof("kind")
  return list(getattr(feature, kind).value)[0]


def _mse(model, pattern):
  """Mean squared error of `model` over every example of the store."""
  errors = [tf.square(model(batch, training=False)[:, 0] - batch["label"])
            for batch in training.read_examples(pattern)]
  return float(tf.reduce_mean(tf.concat(errors, 0)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  """Runs the joiner once, through the command line, over JSON lines."""
  root = tmp_path_factory.mktemp("batch")
  impressions, actions = _events()
  _write_jsonl(root / "impressions.jsonl", impressions,
               extra_lines=['{"request_id": "bad"}', "not json"])
  _write_jsonl(root / "actions.jsonl", actions,
               extra_lines=['{"request_id": "r1", "item_id": "m1", '
                            '"action": "click", "event_time": "soon"}'])
  assert cli.main([
      "join", "--impressions", str(root / "impressions.jsonl"),
      "--actions", str(root / "actions.jsonl"),
      "--output", str(root / "store" / "examples"),
      "--unjoined", str(root / "unjoined"),
      "--window_seconds", "60", "--negative_rate", "0.5",
      "--sample_seed", "3"]) == 0
  return root, impressions, actions


def test_joiner_writes_the_store_and_dead_letters(store):
  root, impressions, actions = store
  shards = glob.glob(str(root / "store" / "examples-*.tfrecord.gz"))
  assert shards
  with gzip.open(shards[0]) as f:    # Really gzip.
    f.read(1)
  examples = _read_store(str(root / "store" / "examples-*"))
  positives = [e for e in examples if _feature(e, "label") == 1.0]
  negatives = [e for e in examples if _feature(e, "label") == 0.0]
  assert len(positives) == len(actions)      # Every click is joined.
  all_negatives = len(impressions) - len(actions)
  # Each negative kept with probability 0.5 (Binomial sd ~ 0.5 sqrt(n)).
  assert abs(len(negatives) - all_negatives / 2) < 5 * 0.5 * all_negatives**.5
  assert {_feature(e, "sample_rate") for e in negatives} == {0.5}
  assert {_feature(e, "sample_rate") for e in positives} == {1.0}
  assert {_feature(e, "action_click") for e in positives} == {1.0}

  letters = []
  for name in glob.glob(str(root / "store" / "dead-letters" / "examples*")):
    with open(name, encoding="utf-8") as f:
      letters += [streams.DeadLetterQueue.decode(line.encode()) for line in f]
  assert sorted((l["topic"].rsplit("/", 1)[-1], l["reason"].split(":")[0])
                for l in letters) == [("actions.jsonl", "bad field"),
                                      ("impressions.jsonl", "missing field"),
                                      ("impressions.jsonl", "not JSON")]
  # Nothing else went unjoined: no duplicates, no late or orphan actions.
  unjoined = glob.glob(str(root / "unjoined*"))
  assert unjoined and all(os.path.getsize(n) == 0 for n in unjoined)


def test_tfrecord_events_join_like_json_lines(store, tmp_path):
  root, impressions, actions = store
  for name, events in (("impressions", impressions), ("actions", actions)):
    with tf.io.TFRecordWriter(str(tmp_path / f"{name}.tfrecord")) as w:
      for event in events:
        w.write(json.dumps(event).encode())
  pipelines.run([
      "--impressions", str(tmp_path / "impressions.tfrecord"),
      "--actions", str(tmp_path / "actions.tfrecord"),
      "--output", str(tmp_path / "examples"),
      "--window_seconds", "60", "--negative_rate", "0.5",
      "--sample_seed", "3"])
  key = lambda e: (_feature(e, "request_id"), _feature(e, "item_id"))
  from_json = sorted(map(key, _read_store(str(root / "store" /
                                              "examples-*"))))
  from_tfrecord = sorted(map(key, _read_store(str(tmp_path /
                                                  "examples-*"))))
  assert from_tfrecord == from_json


def test_batch_training_exports_version_1_and_the_trainer_resumes(
    store, tmp_path):
  root, _, _ = store
  pattern = str(root / "store" / "examples-*")
  model = online_model.make_model()
  before = _mse(model, pattern)
  result = training.train(model, pattern, epochs=4, batch_size=256,
                          export_dir=str(tmp_path / "base"),
                          checkpoint_dir=str(tmp_path / "trainer"),
                          negative_sampling_rate=0.5)
  after = _mse(model, pattern)
  assert after < 0.8 * before, (before, after)
  assert result.examples == len(_read_store(pattern))
  assert result.table_sizes["user"] == USERS
  assert result.clock == 1_000_000 + 10 * (REQUESTS - 1)

  # Version 1 in TF Serving layout: both signatures, core ops only, and it
  # scores like the trained model (plus the log-odds correction).
  assert result.export_path == str(tmp_path / "base" / "1")
  saved_model_checks.assert_servable(result.export_path,
                                     ("serving_default", "apply_patch"))
  with open(os.path.join(result.export_path, export.WATERMARK_FILE)) as f:
    watermark = json.load(f)["watermark"]
  assert watermark == {"user": 1, "item": 1}
  served = tf.saved_model.load(result.export_path)
  features = {"user_id": tf.constant([b"1", b"2"]),
              "item_id": tf.constant([b"m1", b"m2"])}
  outputs = served.signatures["serving_default"](**features)
  expected = model(features, training=False).numpy()
  np.testing.assert_allclose(outputs["outputs"].numpy(), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(outputs["outputs_corrected"].numpy(),
                             expected + np.log(0.5), rtol=1e-5)

  # The online trainer starts from the batch model: same rows, and its
  # first patch follows the export's watermark.
  transport = streams.open_transport(f"file://{tmp_path / 'log'}")
  resumed = online_model.make_model()
  with online.OnlineTrainer(resumed, transport,
                            checkpoint_dir=str(tmp_path / "trainer"),
                            sparse_interval=3600) as trainer:
    assert trainer.restored_from == result.checkpoint_path
    ids = tf.constant([str(u).encode() for u in range(USERS)])
    np.testing.assert_array_equal(
        resumed.user(ids, training=False).numpy(),
        model.user(ids, training=False).numpy())
    producer = transport.producer()
    for record in online_model.examples(50, start=2_000_000):
      producer.send("examples", record)
    producer.flush()
    trainer.run(max_examples=50)        # Ends with a sparse sync.
  with transport.consumer(["patches"], "reader") as consumer:
    records = consumer.poll(100_000, 1.0)
  applied = online_model.apply_patch_records(records,
                                             online_model.replica_tables())
  assert sorted((p.table_name, p.sequence) for p in applied) == [
      ("item", 2), ("user", 2)]


def test_readme_pipeline_runs(monkeypatch, tmp_path):
  readme = (pathlib.Path(__file__).resolve().parents[2] /
            "README.md").read_text()
  section = readme.split("## Joining events and batch training", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  monkeypatch.chdir(tmp_path)
  os.makedirs("events")
  impressions, actions = _events()
  _write_jsonl("events/impressions-0.jsonl", impressions[:900])
  _write_jsonl("events/impressions-1.jsonl", impressions[900:])
  _write_jsonl("events/actions.jsonl", actions, extra_lines=["[]"])
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  examples = _read_store("store/examples-*")
  positives = sum(_feature(e, "label") == 1.0 for e in examples)
  assert positives == len(actions)
  assert len(impressions) * 0.25 < len(examples) < len(impressions)


def test_train_batch_command(store, tmp_path, capsys):
  root, _, _ = store
  model_spec = str(pathlib.Path(online_model.__file__)) + ":make_model"
  assert cli.main([
      "train-batch", "--examples", str(root / "store" / "examples-*"),
      "--model", model_spec, "--export-dir", str(tmp_path / "base"),
      "--version", "7", "--checkpoint-dir", str(tmp_path / "trainer"),
      "--batch-size", "512"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["export_path"] == str(tmp_path / "base" / "7")
  assert summary["table_sizes"]["user"] == USERS
  assert summary["examples"] == len(_read_store(str(root / "store" /
                                                    "examples-*")))
  saved_model_checks.assert_servable(summary["export_path"],
                                     ("serving_default", "apply_patch"))
  assert summary["checkpoint_path"].startswith(str(tmp_path / "trainer"))
