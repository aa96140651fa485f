"""Cluster scenarios for `test_cluster.py`, each run in its own process.

`python cluster_job.py SCENARIO OUT_JSON [TMP_DIR]` starts an in-process
cluster on loopback (`tm.distribute.LocalCluster`), runs the scenario as the
coordinator and writes what it saw to OUT_JSON. A process of its own, because
connecting to a cluster changes TensorFlow's eager context for the whole
process, and TensorFlow servers cannot be stopped.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import tfrs_monolith as tm  # Selects Keras 2 before TensorFlow.
import tensorflow as tf
from tfrs_monolith import distribute
from tfrs_monolith import export
from tfrs_monolith import online
from tfrs_monolith import streams
from tfrs_monolith.beam import training

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import online_model  # pylint: disable=g-import-not-at-top,wrong-import-position

SUM = tf.keras.losses.Reduction.SUM
USERS, ITEMS, N, BATCH = 300, 400, 8192, 128


def make_data(seed=0):
  """Labels a model must learn per user and per item: a bias each."""
  rng = np.random.default_rng(seed)
  user_bias = rng.normal(0, 1, USERS)
  item_bias = rng.normal(0, 1, ITEMS)
  users = rng.integers(0, USERS, N)
  items = rng.integers(0, ITEMS, N)
  labels = (user_bias[users] + item_bias[items] +
            rng.normal(0, 0.1, N)).astype(np.float32)
  return {"user_id": np.array([str(u) for u in users]),
          "item_id": np.array([str(i) for i in items]),
          "label": labels, "event_time": 1_000 + np.arange(N, dtype=np.int64)}


def make_model():
  model = online_model.Ranking(capacity=1024, reduction=SUM)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.05))
  return model


def dataset_fn(data, repeat=True):
  def fn(input_context=None):
    del input_context
    dataset = tf.data.Dataset.from_tensor_slices(data).shuffle(
        N, seed=1).batch(BATCH)
    return dataset.repeat() if repeat else dataset
  return fn


def mse(model, data):
  features = {k: tf.constant(v) for k, v in data.items()}
  predictions = model(features, training=False)[:, 0].numpy()
  return float(np.mean((predictions - data["label"])**2))


def table_placement(layer):
  """{shard: sorted devices of all its variables}."""
  return {shard.name: sorted({v.device for v in shard.variables})
          for shard in layer.shards}


def vectors(layer, keys):
  return layer(tf.constant(keys), training=False).numpy()


def all_keys(data):
  return {"user": np.unique(data["user_id"]),
          "item": np.unique(data["item_id"])}


def bytes_per_device(variables):
  out = {}
  for var in variables:
    size = var.shape.num_elements() * var.dtype.size
    out[var.device] = out.get(var.device, 0) + size
  return out


def scenario_fit(out, tmp):
  """model.fit on 2 PS + 2 workers vs one process; shards; checkpoint;
  merged patches."""
  data = make_data()
  epochs = int(os.environ.get("EPOCHS", "3"))
  steps = N // BATCH

  local = make_model()
  local.fit(dataset_fn(data, repeat=False)(), epochs=epochs, verbose=0)
  out["local_mse"] = mse(local, data)
  out["label_variance"] = float(np.var(data["label"]))

  cluster = distribute.LocalCluster(num_workers=2, num_ps=2)
  strategy = distribute.parameter_server_strategy(cluster.resolver)
  with strategy.scope():
    model = make_model()
    out["initial_mse"] = mse(model, data)    # Builds it in the scope.
  started = time.perf_counter()
  history = model.fit(
      tf.keras.utils.experimental.DatasetCreator(dataset_fn(data)),
      epochs=epochs, steps_per_epoch=steps, verbose=0)
  out["fit_seconds"] = time.perf_counter() - started
  out["losses"] = history.history["loss"]
  out["cluster_mse"] = mse(model, data)
  out["num_shards"] = {t.name: t.num_shards for t in (model.user, model.item)}
  out["placement"] = {t.name: table_placement(t)
                      for t in (model.user, model.item)}
  slots = {}
  for var in model.optimizer.variables():
    for t in (model.user, model.item):
      for shard in t.shards:
        if var.name.endswith("/" + shard.embeddings.name):
          slots[var.name] = [var.device, shard.embeddings.device]
  out["slots"] = slots
  out["sizes"] = {t.name: int(t.table.size()) for t in (model.user,
                                                        model.item)}
  out["shard_sizes"] = {t.name: [int(s.table.size()) for s in t.shards]
                        for t in (model.user, model.item)}
  out["capacity"] = {t.name: t.table.capacity for t in (model.user,
                                                        model.item)}
  out["ps_bytes"] = bytes_per_device(model.variables +
                                     model.optimizer.variables())
  keys = all_keys(data)
  trained = {name: vectors(getattr(model, name), k)
             for name, k in keys.items()}

  # Checkpoint on the cluster, restore into a new sharded model there.
  path = tf.train.Checkpoint(model=model).save(os.path.join(tmp, "ckpt"))
  with strategy.scope():
    restored = make_model()
    for t in (restored.user, restored.item):
      t.build(None)
  status = tf.train.Checkpoint(model=restored).restore(path)
  status.assert_existing_objects_matched()
  out["restored_equal"] = all(
      np.array_equal(vectors(getattr(restored, n), k), trained[n])
      for n, k in keys.items())
  out["restored_sizes"] = {t.name: int(t.table.size())
                           for t in (restored.user, restored.item)}

  # One merged patch per table makes an unsharded replica equal.
  replicas = online_model.replica_tables(capacity=1024)
  out["patch_rows"] = {}
  for t in (model.user, model.item):
    patch = t.export_patch("m")
    out["patch_rows"][t.name] = len(patch)
    replicas[t.name].apply_patch(patch)
  out["replica_equal"] = all(
      np.allclose(vectors(replicas[n], k), trained[n], atol=0)
      for n, k in keys.items())
  concurrent_inserts(out, strategy)


def concurrent_inserts(out, strategy, steps=40, batch=1024):
  """Both workers insert new random keys at once into one sharded table:
  every key must get a row of its own."""
  coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(
      strategy)
  with strategy.scope():
    layer = tm.CollisionlessEmbedding(4, capacity=2 * steps * batch,
                                      name="stress")
    layer.build(None)
    optimizer = tf.keras.optimizers.SGD(0.1)
    layer.bind_optimizer(optimizer)

  @tf.function
  def step():
    def train():
      keys = tf.random.uniform([batch], 1, 2**62, dtype=tf.int64)
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(keys, training=True))
      grads = tape.gradient(loss, layer.trainable_variables)
      optimizer.apply_gradients(zip(grads, layer.trainable_variables))
      return tf.size(keys)
    return strategy.run(train)

  for _ in range(steps):
    coordinator.schedule(step)
  coordinator.join()
  checks = []
  for shard in layer.shards:
    table = shard.table
    live = table.live_rows().numpy()
    keys = table.row_keys.numpy()[live]
    rows = table.lookup(keys).numpy()
    checks.append({"size": int(table.size()), "live_rows": len(live),
                   "distinct_keys": len(np.unique(keys)),
                   "rows_match": bool(np.array_equal(rows, live))})
  out["concurrent_inserts"] = {"expected": steps * batch, "shards": checks}


def scenario_online(out, tmp):
  """Batch training, then the online trainer, on 2 PS + 2 workers found
  through TF_CONFIG (as `train-batch` / `train-online` find them); patches
  rebuild the tables; the exports serve."""
  cluster = distribute.LocalCluster(num_workers=2, num_ps=2, chief=True)
  os.environ["TF_CONFIG"] = cluster.tf_config("chief", 0)
  with distribute.strategy_scope():
    model = online_model.Ranking(capacity=1024, item_min_count=2, ttl=600,
                                 reduction=SUM)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.05))

  # Batch training on a store of gzip TFRecord shards.
  store = os.path.join(tmp, "store")
  os.makedirs(store)
  for shard in range(2):
    with tf.io.TFRecordWriter(
        os.path.join(store, f"examples-{shard:05d}-of-00002.tfrecord.gz"),
        options="GZIP") as writer:
      for value in online_model.examples(1000, seed=10 + shard, users=200,
                                         items=300):
        writer.write(value)
  result = training.train(
      model, os.path.join(store, "examples-*"), epochs=2, batch_size=100,
      export_dir=os.path.join(tmp, "serving"), version=1,
      checkpoint_dir=os.path.join(tmp, "trainer"))
  out["batch"] = {"examples": result.examples,
                  "table_sizes": result.table_sizes,
                  "iterations": int(model.optimizer.iterations.numpy()),
                  "export_path": result.export_path}

  transport = streams.open_transport("file://" + os.path.join(tmp, "topics"))
  topics = streams.Topics()
  transport.create_topics([topics.examples])
  producer = transport.producer()
  records = online_model.examples(3000, users=200, items=300)
  for value in records:
    producer.send(topics.examples, value)
  producer.send(topics.examples, b"not an example")
  producer.flush()
  trainer = online.OnlineTrainer(
      model, transport, os.path.join(tmp, "trainer"), batch_size=128,
      sparse_interval=2.0, log_interval=1000,
      export_dir=os.path.join(tmp, "serving"),
      export_fn=export.export_saved_model)
  out["restored_from"] = trainer.restored_from
  with trainer:
    stats = trainer.run(idle_timeout=3)
    out["metrics"] = trainer.metrics()
    out["export_path"] = trainer.export()
  # What the export must serve for some requests.
  features = {"user_id": tf.constant(["1", "5", "77", "never"]),
              "item_id": tf.constant(["2", "8", "150", "seen"])}
  out["requests"] = {k: [x.decode() for x in v.numpy()]
                     for k, v in features.items()}
  out["scores"] = model(features, training=False)[:, 0].numpy().tolist()
  out["examples"] = stats.examples
  out["batches"] = stats.batches
  out["patches"] = stats.patches
  out["checkpoints"] = stats.checkpoints
  out["iterations"] = int(model.optimizer.iterations.numpy())
  out["num_shards"] = model.user.num_shards
  out["strategy"] = type(model.distribute_strategy).__name__

  consumer = transport.consumer([topics.patches], "check")
  replicas = online_model.replica_tables(capacity=1024)
  applied = []
  while True:
    batch = consumer.poll(1000, 1.0)
    if not batch:
      break
    applied += online_model.apply_patch_records(batch, replicas)
  out["applied"] = len(applied)
  out["equal"] = {}
  for name in ("user", "item"):
    layer = getattr(model, name)
    keys = layer.live_keys()
    trained, _ = layer.read_rows(keys)
    served, present = replicas[name].read_rows(keys)
    out["equal"][name] = bool(np.all(present.numpy()) and np.array_equal(
        trained.numpy(), served.numpy()))
    out["equal"][name + "_size"] = [int(tf.size(keys)),
                                    int(replicas[name].table.size())]


def scenario_killed_worker(out, tmp):
  """A worker process is killed while steps run; the rest finish them."""
  external = f"localhost:{distribute.free_port()}"
  cluster = distribute.LocalCluster(num_workers=1, num_ps=2,
                                    extra_workers=[external])
  env = dict(os.environ, TF_CONFIG=cluster.tf_config("worker", 1))
  worker = subprocess.Popen(
      [sys.executable, "-m", "tfrs_monolith.cli", "server"], env=env,
      stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "worker.log"),
                                             "wb"))
  try:
    strategy = distribute.parameter_server_strategy(cluster.resolver)
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(
        strategy)
    data = make_data()
    with strategy.scope():
      model = make_model()
    per_worker = coordinator.create_per_worker_dataset(dataset_fn(data))
    iterator = iter(per_worker)

    @tf.function
    def step(iterator):
      def train(features):
        with tm.embedding.learning():
          return model.train_step(features)["loss"]
      return strategy.run(train, args=(next(iterator),))

    first = 40
    results = [coordinator.schedule(step, args=(iterator,))
               for _ in range(first)]
    coordinator.join()
    out["before_kill"] = int(model.optimizer.iterations.numpy())
    more = 400
    results = [coordinator.schedule(step, args=(iterator,))
               for _ in range(more)]
    # Mid-stream on any host: 20 of the new steps done, most still to run.
    deadline = time.monotonic() + 120
    while (int(model.optimizer.iterations.numpy()) < first + 20 and
           time.monotonic() < deadline):
      time.sleep(0.01)
    out["at_kill"] = int(model.optimizer.iterations.numpy())
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    out["killed"] = True
    coordinator.join()
    losses = [float(r.fetch()) for r in results]
    out["after_kill"] = int(model.optimizer.iterations.numpy())
    out["scheduled"] = first + more
    out["losses_finite"] = bool(np.all(np.isfinite(losses)))
    out["mse"] = mse(model, data)
    out["label_variance"] = float(np.var(data["label"]))
  finally:
    if worker.poll() is None:
      worker.kill()


def main():
  scenario, path = sys.argv[1], sys.argv[2]
  tmp = sys.argv[3] if len(sys.argv) > 3 else os.path.dirname(path)
  out = {}
  try:
    globals()["scenario_" + scenario](out, tmp)
  finally:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(out, f, default=str)
  # TensorFlow servers cannot be stopped: leave without waiting for them.
  sys.stdout.flush()
  os._exit(0)  # pylint: disable=protected-access


if __name__ == "__main__":
  main()
