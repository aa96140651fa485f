"""Tests for `tfrs_monolith.CollisionlessEmbedding`."""

import time

import numpy as np
import pytest
import tensorflow as tf

import tfrs_monolith as tm


def _vectors(layer, ids):
  return layer(tf.constant(ids, tf.int64)).numpy()


class TestLookup:

  @pytest.mark.parametrize("shape", [[], [3], [2, 3], [2, 1, 4]])
  def test_output_shape(self, shape):
    layer = tm.CollisionlessEmbedding(5, capacity=16)
    ids = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    assert layer(ids, training=True).shape == tuple(shape) + (5,)
    assert layer.compute_output_shape(shape) == tuple(shape) + (5,)

  def test_string_and_ragged_ids(self):
    layer = tm.CollisionlessEmbedding(3, capacity=16)
    first = layer(tf.constant(["a", "b", "a"]), training=True).numpy()
    np.testing.assert_array_equal(first[0], first[2])
    assert not np.array_equal(first[0], first[1])
    ragged = layer(tf.ragged.constant([["a"], ["b", "a"]]))
    assert ragged.shape.as_list() == [2, None, 3]
    np.testing.assert_array_equal(ragged.flat_values.numpy(),
                                  first[[0, 1, 0]])

  def test_inference_never_inserts(self):
    layer = tm.CollisionlessEmbedding(4, capacity=16)
    out = layer(tf.constant([1, 2]))
    np.testing.assert_array_equal(out.numpy(), np.zeros([2, 4]))
    out = layer(tf.constant([1, 2]), training=False)
    assert layer.table.size().numpy() == 0
    layer(tf.constant([1, 2]), training=True)
    assert layer.table.size().numpy() == 2

  def test_training_flag_as_tensor(self):
    layer = tm.CollisionlessEmbedding(4, capacity=16)
    fn = tf.function(lambda ids, t: layer(ids, training=t))
    fn(tf.constant([1, 2], tf.int64), tf.constant(False))
    assert layer.table.size().numpy() == 0
    fn(tf.constant([1, 2], tf.int64), tf.constant(True))
    assert layer.table.size().numpy() == 2

  def test_rows_initialised_per_key(self):
    a = tm.CollisionlessEmbedding(8, capacity=16, seed=3)
    b = tm.CollisionlessEmbedding(8, capacity=16, seed=3)
    a(tf.constant([10, 20], tf.int64), training=True)
    b(tf.constant([20], tf.int64), training=True)
    b(tf.constant([10], tf.int64), training=True)
    # Same vector per key whatever the row or insertion order.
    np.testing.assert_array_equal(_vectors(a, [10, 20]), _vectors(b, [10, 20]))
    values = _vectors(a, [10, 20])
    assert np.all(np.abs(values) <= 0.05) and values.std() > 0.01

  @pytest.mark.parametrize("initializer, check", [
      ("zeros", lambda v: np.all(v == 0)),
      (tf.keras.initializers.Constant(0.5), lambda v: np.all(v == 0.5)),
      (tf.keras.initializers.RandomUniform(-1.0, 1.0),
       lambda v: np.abs(v).max() <= 1 and np.abs(v).max() > 0.5),
      ("truncated_normal", lambda v: np.abs(v).max() <= 0.1),
      (tf.keras.initializers.RandomNormal(stddev=2.0),
       lambda v: 1.5 < v.std() < 2.5),
  ])
  def test_initializers(self, initializer, check):
    layer = tm.CollisionlessEmbedding(
        64, capacity=64, embeddings_initializer=initializer)
    assert check(layer(tf.range(50, dtype=tf.int64), training=True).numpy())


class TestAdmission:

  def test_min_count(self):
    layer = tm.CollisionlessEmbedding(4, capacity=16, min_count=3)
    # 7 is seen twice: not admitted, reads zeros, takes no row.
    out = layer(tf.constant([7, 7, 8], tf.int64), training=True).numpy()
    np.testing.assert_array_equal(out, np.zeros([3, 4]))
    assert layer.table.size().numpy() == 0
    # Third sighting admits 7 (the batch reads its fresh row); 8 waits.
    out = layer(tf.constant([7, 8], tf.int64), training=True).numpy()
    assert np.any(out[0] != 0) and np.all(out[1] == 0)
    assert layer.table.size().numpy() == 1
    np.testing.assert_array_equal(layer.table.lookup([7, 8]).numpy() >= 0,
                                  [True, False])

  def test_gradients_only_for_admitted_rows(self):
    layer = tm.CollisionlessEmbedding(4, capacity=16, min_count=2)
    layer(tf.constant([1, 1], tf.int64), training=True)
    with tf.GradientTape() as tape:
      out = layer(tf.constant([1, 2, 1], tf.int64), training=True)
      loss = tf.reduce_sum(out)
    (grad,) = tape.gradient(loss, [layer.embeddings])
    assert isinstance(grad, tf.IndexedSlices)
    row = layer.table.lookup([1]).numpy()[0]
    # The unadmitted id reads the sink row (index `capacity + 1`), zeroed,
    # and its gradient lands there. Key 1's row gets one gradient per
    # occurrence.
    sink = layer.capacity + 1
    np.testing.assert_array_equal(out.numpy()[1], 0.0)
    indices, values = grad.indices.numpy(), grad.values.numpy()
    assert set(indices.tolist()) == {row, sink}
    np.testing.assert_allclose(values[indices == row].sum(axis=0),
                               np.full([4], 2.0))

  @pytest.mark.parametrize("optimizer", ["adagrad", "adam", "ftrl"])
  def test_unadmitted_ids_change_no_row_or_optimizer_state(self, optimizer):
    layer = tm.CollisionlessEmbedding(4, capacity=16, min_count=3)
    opt = tf.keras.optimizers.get(optimizer)
    layer.build(None)
    layer.bind_optimizer(opt)
    opt.build([layer.embeddings])
    before = [v.numpy().copy() for v in [layer.embeddings] +
              layer._optimizer_rows()]
    for _ in range(2):  # Twice seen: still not admitted.
      with tf.GradientTape() as tape:
        out = layer(tf.constant([5, 6], tf.int64), training=True)
        loss = tf.reduce_sum(out + 1.0)
      # The sink row was trained at the previous step, yet reads zeros.
      np.testing.assert_array_equal(out.numpy(), 0.0)
      opt.apply_gradients(zip(tape.gradient(loss, [layer.embeddings]),
                              [layer.embeddings]))
    after = [v.numpy() for v in [layer.embeddings] + layer._optimizer_rows()]
    assert layer.table.size().numpy() == 0
    # Every row but the sink (the last) is as it was, the template row
    # (`capacity`, the source of fresh optimizer state) included.
    for old, new in zip(before, after):
      np.testing.assert_array_equal(new[:-1], old[:-1])
    np.testing.assert_array_equal(
        layer(tf.constant([5, 6], tf.int64), training=False).numpy(), 0.0)


class TestJitCompile:

  def test_same_training_with_and_without_xla(self):
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 50, size) for size in (16, 16, 7, 33, 16)]
    layers = []
    for jit_compile in (True, False):
      layer = tm.CollisionlessEmbedding(4, capacity=32, jit_compile=jit_compile)
      optimizer = tf.keras.optimizers.Adagrad(0.3)
      layer.bind_optimizer(optimizer)

      @tf.function
      def step(ids, layer=layer, optimizer=optimizer):
        with tf.GradientTape() as tape:
          loss = tf.reduce_sum(tf.square(layer(ids, training=True) - 1.0))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables))

      # Sizes vary: the XLA probe pads them. The table overflows and evicts
      # least recently seen ids, so time is event time, the same in both.
      for t, ids in enumerate(batches):
        layer.advance_clock(1000 + t)
        step(tf.constant(ids, tf.int64))
      layers.append(layer)
    ids = np.arange(50)
    np.testing.assert_array_equal(layers[0].table.lookup(ids).numpy(),
                                  layers[1].table.lookup(ids).numpy())
    np.testing.assert_allclose(_vectors(layers[0], ids),
                               _vectors(layers[1], ids), rtol=1e-6)

  def test_inference_uses_xla_except_in_serving_graphs(self):
    layer = tm.CollisionlessEmbedding(4, capacity=64)
    layer(tf.range(40, dtype=tf.int64), training=True)
    ids = tf.constant([3, 77, 5, 39, 3], tf.int64)   # 77 is unknown.

    def xla_functions(fn):
      graph = tf.function(fn).get_concrete_function(
          tf.TensorSpec([None], tf.int64)).graph.as_graph_def()
      return [f.signature.name for f in graph.library.function
              if f.attr["_XlaMustCompile"].b]

    read = lambda x: layer(x, training=False)
    assert xla_functions(read)
    with tm.embedding.serving_graph():
      assert not xla_functions(read)
      served = layer(ids, training=False).numpy()
    np.testing.assert_array_equal(layer(ids, training=False).numpy(), served)
    np.testing.assert_array_equal(served[1], 0.0)
    assert np.all(served[[0, 2, 3, 4]] != 0.0)

  def test_must_be_bool(self):
    with pytest.raises(TypeError, match="jit_compile='yes'"):
      tm.CollisionlessEmbedding(4, capacity=8, jit_compile="yes")


class TestExpiryAndReuse:

  def test_expire_evicts_idle_keys(self):
    layer = tm.CollisionlessEmbedding(4, capacity=8, ttl_seconds=60)
    layer.advance_clock(1000)
    layer(tf.constant([1, 2], tf.int64), training=True)
    layer.advance_clock(1050)
    layer(tf.constant([2], tf.int64), training=True)
    assert layer.expire(1070).numpy().tolist() == [1]
    assert layer.expire(1200).numpy().tolist() == [2]
    assert layer.table.size().numpy() == 0

  def test_no_ttl_never_expires(self):
    layer = tm.CollisionlessEmbedding(4, capacity=8)
    layer(tf.constant([1], tf.int64), training=True)
    assert layer.expire(10**12).numpy().size == 0
    assert layer.table.size().numpy() == 1

  def test_without_event_time_ids_are_stamped_with_wall_time(self):
    layer = tm.CollisionlessEmbedding(4, capacity=8, ttl_seconds=60)
    start = int(time.time())
    layer(tf.constant([1], tf.int64), training=True)
    layer(tf.constant([1, 2], tf.int64), training=True)  # Steady + insert.
    # Training does not move the clock: only `advance_clock` does.
    assert layer.clock.numpy() == 0
    rows = layer.table.lookup([1, 2]).numpy()
    last_seen = layer.table.row_last_seen.numpy()[rows]
    assert np.all(last_seen >= start) and np.all(last_seen <= time.time())
    assert layer.expire(start + 30).numpy().size == 0
    assert sorted(layer.expire(start + 120).numpy().tolist()) == [1, 2]

  def test_clock_never_goes_back(self):
    layer = tm.CollisionlessEmbedding(4, capacity=8)
    layer.advance_clock(500)
    layer.advance_clock(400)
    assert layer.clock.numpy() == 500

  @pytest.mark.parametrize("optimizer", [
      tf.keras.optimizers.Adagrad(0.5),
      tf.keras.optimizers.Adam(0.5),
      tf.keras.optimizers.SGD(0.5, momentum=0.9),
      tf.keras.optimizers.Ftrl(0.5),
      tf.keras.optimizers.RMSprop(0.5),
      tf.keras.optimizers.legacy.Adagrad(0.5),
  ], ids=lambda o: type(o).__module__.split(".")[-1] + type(o).__name__)
  def test_reused_row_starts_fresh(self, optimizer):
    layer = tm.CollisionlessEmbedding(4, capacity=1, ttl_seconds=10)
    layer.bind_optimizer(optimizer)
    layer.advance_clock(100)

    def step(key):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(
            tf.square(layer(tf.constant([key], tf.int64), training=True) - 1))
      grads = tape.gradient(loss, layer.trainable_variables)
      optimizer.apply_gradients(zip(grads, layer.trainable_variables))

    for _ in range(3):
      step(1)
    slots = layer._optimizer_rows()
    assert slots, "the optimizer's per-row state was not found"
    row = layer.table.lookup([1]).numpy()[0]
    assert any(not np.array_equal(s.numpy()[row], s.numpy()[1])
               for s in slots)
    layer.expire(200)
    # Key 2 takes the freed row: fresh value, fresh optimizer state.
    layer(tf.constant([2], tf.int64), training=True)
    assert layer.table.lookup([2]).numpy()[0] == row
    fresh = tm.CollisionlessEmbedding(4, capacity=1)
    fresh(tf.constant([2], tf.int64), training=True)
    np.testing.assert_array_equal(_vectors(layer, [2]), _vectors(fresh, [2]))
    for s in slots:
      np.testing.assert_array_equal(s.numpy()[row], s.numpy()[1])


class TestFullTable:

  def test_error_policy(self):
    layer = tm.CollisionlessEmbedding(4, capacity=2, full_policy="error")
    layer(tf.constant([1, 2], tf.int64), training=True)
    before = _vectors(layer, [1, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="is full"):
      layer(tf.constant([3], tf.int64), training=True)
    np.testing.assert_array_equal(_vectors(layer, [1, 2]), before)
    assert layer.table.lookup([3]).numpy()[0] == -1

  def test_lru_policy_keeps_recent_keys(self):
    layer = tm.CollisionlessEmbedding(4, capacity=3)
    for t, key in enumerate([1, 2, 3]):
      layer.advance_clock(100 + t)
      layer(tf.constant([key], tf.int64), training=True)
    layer.advance_clock(110)
    layer(tf.constant([1], tf.int64), training=True)
    kept = _vectors(layer, [1, 3])
    layer.advance_clock(120)
    layer(tf.constant([4], tf.int64), training=True)   # evicts 2 (t=101)
    assert layer.table.lookup([2]).numpy()[0] == -1
    np.testing.assert_array_equal(_vectors(layer, [1, 3]), kept)
    assert layer.export_patch().evicted.tolist() == [2]


class TestPatches:

  def test_export_returns_exactly_touched_rows(self):
    layer = tm.CollisionlessEmbedding(4, capacity=8, ttl_seconds=5)
    layer.advance_clock(10)
    layer(tf.constant([1, 2, 3], tf.int64), training=True)
    patch = layer.export_patch(model_name="m", watermark={"examples/0": 3})
    assert sorted(patch.keys.tolist()) == [1, 2, 3]
    assert (patch.sequence, patch.table_name) == (1, layer.name)
    assert patch.watermark == {"examples/0": 3} and patch.created_at == 10
    np.testing.assert_array_equal(patch.values, _vectors(layer, patch.keys))
    layer.advance_clock(14)
    layer(tf.constant([2], tf.int64), training=True)
    layer.embeddings.scatter_nd_update([[layer.table.lookup([2])[0]]],
                                       [[9.0, 9.0, 9.0, 9.0]])
    layer.expire(18)                            # 1 and 3: idle since 10.
    patch = layer.export_patch()
    assert patch.keys.tolist() == [2] and patch.sequence == 2
    np.testing.assert_array_equal(patch.values, [[9.0] * 4])
    assert sorted(patch.evicted.tolist()) == [1, 3]
    empty = layer.export_patch()
    assert len(empty) == 0 and empty.evicted.size == 0

  def test_replica_equals_trainer(self):
    trainer = tm.CollisionlessEmbedding(4, capacity=40, ttl_seconds=30)
    replica = tm.CollisionlessEmbedding(4, capacity=40)
    rng = np.random.default_rng(0)
    optimizer = tf.keras.optimizers.Adagrad(0.3)
    for t in range(12):
      trainer.advance_clock(100 + 10 * t)
      ids = tf.constant(rng.integers(0, 60, size=16), tf.int64)
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(trainer(ids, training=True))
      grads = tape.gradient(loss, trainer.trainable_variables)
      optimizer.apply_gradients(zip(grads, trainer.trainable_variables))
      trainer.expire()
      patch = trainer.export_patch()
      wire = tm.EmbeddingPatch.from_chunks(patch.to_chunks(max_bytes=200))
      replica.apply_patch(wire)
      if t == 5:  # Re-applying a patch changes nothing.
        replica.apply_patch(wire)
    live = trainer.table.row_keys.numpy()[trainer.table.live_rows().numpy()]
    assert replica.table.size().numpy() == len(live) > 0
    np.testing.assert_array_equal(_vectors(replica, live),
                                  _vectors(trainer, live))
    gone = np.setdiff1d(np.arange(60), live)
    assert (replica.table.lookup(gone).numpy() == -1).all()

  def test_full_snapshot_drops_unlisted_keys(self):
    replica = tm.CollisionlessEmbedding(2, capacity=8)
    replica.apply_patch(tm.EmbeddingPatch(keys=[1, 2, 3],
                                          values=np.ones([3, 2])))
    changed = replica.apply_patch(tm.EmbeddingPatch(
        keys=[3, 4], values=np.full([2, 2], 2.0), full=True))
    assert changed == 4                          # 2 upserts + 2 removals
    assert replica.table.lookup([1, 2]).numpy().tolist() == [-1, -1]
    np.testing.assert_array_equal(_vectors(replica, [3, 4]),
                                  np.full([2, 2], 2.0))

  def test_apply_patch_checks_its_argument(self):
    layer = tm.CollisionlessEmbedding(4, capacity=8)
    with pytest.raises(TypeError, match="tm.EmbeddingPatch.*dict"):
      layer.apply_patch({"keys": [1]})
    with pytest.raises(ValueError, match="dim 3 .* output_dim=4"):
      layer.apply_patch(tm.EmbeddingPatch(keys=[1], values=np.ones([1, 3])))


class TestValidation:

  @pytest.mark.parametrize("kwargs, message", [
      ({"output_dim": 0, "capacity": 8}, "output_dim=0"),
      ({"output_dim": 4, "capacity": -1}, "capacity=-1"),
      ({"output_dim": 4, "capacity": 8.0}, "capacity=8.0"),
      ({"output_dim": 4, "capacity": 8, "min_count": 0}, "min_count=0"),
      ({"output_dim": 4, "capacity": 8, "ttl_seconds": -5}, "ttl_seconds=-5"),
      ({"output_dim": 4, "capacity": 8, "ttl_seconds": "1h"},
       "ttl_seconds='1h'"),
      ({"output_dim": 4, "capacity": 8, "full_policy": "drop"},
       "full_policy='drop'"),
      ({"output_dim": 4, "capacity": 8, "embeddings_initializer": "orthogonal"},
       "embeddings_initializer='orthogonal'"),
      ({"output_dim": 4, "capacity": 8, "admission_window": -1},
       "admission_window=-1"),
      ({"output_dim": 4, "capacity": 8, "admission_window": 1.5},
       "admission_window=1.5"),
  ])
  def test_invalid_arguments(self, kwargs, message):
    with pytest.raises(ValueError, match=message):
      tm.CollisionlessEmbedding(**kwargs)

  def test_admission_window(self):
    # Defaults to the sketch's width; 0 turns aging off; shards split it.
    layer = tm.CollisionlessEmbedding(4, capacity=8, min_count=2)
    assert layer.sketch.window == layer.sketch.width == 4096
    forever = tm.CollisionlessEmbedding(4, capacity=8, min_count=2,
                                        admission_window=0)
    assert forever.sketch.window is None
    sharded = tm.CollisionlessEmbedding(4, capacity=300, min_count=2,
                                        num_shards=3, admission_window=1000)
    assert [s.sketch.window for s in sharded.shards] == [334] * 3
    # The aging shows in training: 8,192 ids seen once, in batches of
    # 1,024, halve the counts of a 4,096-wide sketch three times: at 4,096
    # counted (-> 2,048), then every 2,048 more.
    for b in range(8):
      layer(tf.range(b * 1024, (b + 1) * 1024, dtype=tf.int64) + (1 << 40),
            training=True)
    assert int(layer.sketch.halvings) == layer.admission_halvings() == 3
    forever(tf.range(8192, dtype=tf.int64), training=True)
    assert forever.admission_halvings() == 0
    # A sharded layer sums its shards' halvings: 3,000 ids without a row
    # reach each shard's window of 334 about twice.
    sharded(tf.range(3000, dtype=tf.int64) + (1 << 40), training=True)
    halvings = [int(s.sketch.halvings) for s in sharded.shards]
    assert min(halvings) >= 1
    assert sharded.admission_halvings() == sum(halvings)
    assert tm.CollisionlessEmbedding(4, capacity=8).admission_halvings() == 0

  def test_invalid_ids(self):
    layer = tm.CollisionlessEmbedding(4, capacity=8)
    with pytest.raises(TypeError, match="inputs.*float32"):
      layer(tf.constant([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"inputs.*float\d\d: \[0.5\]"):
      layer(np.array([0.5]))
    with pytest.raises(TypeError, match="inputs.*bool"):
      layer(tf.constant([True]))
    with pytest.raises(TypeError, match="SparseTensor"):
      layer(tf.sparse.from_dense(tf.constant([[1, 0]], tf.int64)))

  def test_invalid_time(self):
    layer = tm.CollisionlessEmbedding(4, capacity=8)
    with pytest.raises(TypeError, match="now_seconds='soon'"):
      layer.advance_clock("soon")
    with pytest.raises(TypeError, match="now_seconds=nan"):
      layer.expire(float("nan"))


class TestSerialization:

  def test_serialization(self):
    layer = tm.CollisionlessEmbedding(
        8, capacity=100, min_count=2, ttl_seconds=3600,
        embeddings_initializer="truncated_normal", full_policy="error",
        slots_per_bucket=4, admission_width=512, admission_window=2048,
        seed=7, name="user")
    serialized = tf.keras.layers.serialize(layer)
    assert serialized["registered_name"] == (
        "tfrs_monolith>CollisionlessEmbedding")
    new_layer = tf.keras.layers.deserialize(serialized)
    assert layer.get_config() == new_layer.get_config()
    assert new_layer.get_config()["ttl_seconds"] == 3600
    assert new_layer.get_config()["admission_window"] == 2048

  def test_save_model(self, tmp_path):
    inputs = tf.keras.Input(shape=(2,), dtype=tf.int64)
    layer = tm.CollisionlessEmbedding(4, capacity=32, min_count=2,
                                      ttl_seconds=100)
    outputs = tf.keras.layers.Dense(1)(
        tf.keras.layers.Flatten()(layer(inputs)))
    model = tf.keras.Model(inputs, outputs)
    layer.advance_clock(1000)
    layer(tf.constant([[1, 2], [3, 4]], tf.int64), training=True)
    layer(tf.constant([[1, 2], [3, 1]], tf.int64), training=True)
    ids = np.array([[1, 2], [3, 4]], np.int64)
    expected = model.predict(ids, verbose=0)
    model.save(str(tmp_path / "model"))
    loaded = tf.keras.models.load_model(str(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), expected)
    restored = [l for l in loaded.layers
                if isinstance(l, tm.CollisionlessEmbedding)][0]
    assert restored.table.size().numpy() == 3
    assert restored.clock.numpy() == 1000
    # Admission counts survive: 4 seen once before saving, admitted on the
    # second sighting after loading.
    restored(tf.constant([4], tf.int64), training=True)
    assert restored.table.lookup([4]).numpy()[0] >= 0

  def test_checkpoint_restores_whole_state(self, tmp_path):
    layer = tm.CollisionlessEmbedding(4, capacity=16, min_count=2,
                                      ttl_seconds=50, name="user")
    layer.advance_clock(500)
    layer(tf.constant([1, 1, 2, 3, 3], tf.int64), training=True)
    layer.expire(520)
    layer.export_patch()
    layer(tf.constant([5, 5, 9], tf.int64), training=True)
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    copy = tm.CollisionlessEmbedding(4, capacity=16, min_count=2,
                                     ttl_seconds=50, name="user")
    copy.build(None)
    tf.train.Checkpoint(layer=copy).restore(path).assert_consumed()
    ids = [1, 2, 3, 5, 9]
    np.testing.assert_array_equal(_vectors(copy, ids), _vectors(layer, ids))
    for name in ("buckets", "row_keys", "row_last_seen",
                 "row_count", "row_dirty", "free_stack", "num_free"):
      np.testing.assert_array_equal(getattr(copy.table, name).numpy(),
                                    getattr(layer.table, name).numpy())
    assert copy.clock.numpy() == 520 and copy.patch_sequence.numpy() == 1
    # Sketch, dirty rows and patch sequence continue where they were.
    for table in (layer, copy):
      table(tf.constant([2, 9], tf.int64), training=True)
    assert copy.export_patch() == layer.export_patch()


class TestShards:
  """`num_shards`: one table split by key hash into independent shards."""

  def _train(self, layer, batches, optimizer):
    for ids in batches:
      with tf.GradientTape() as tape:
        vectors = layer(tf.constant(ids, tf.int64), training=True)
        loss = tf.reduce_sum(tf.square(vectors - 1.0))
      grads = tape.gradient(loss, layer.trainable_variables)
      optimizer.apply_gradients(zip(grads, layer.trainable_variables))

  def test_sharding_changes_no_vector(self):
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 200, 32) for _ in range(8)]
    plain = tm.CollisionlessEmbedding(4, capacity=300, min_count=2,
                                      jit_compile=False)
    sharded = tm.CollisionlessEmbedding(4, capacity=300, min_count=2,
                                        num_shards=3, jit_compile=False)
    for layer in (plain, sharded):
      optimizer = tf.keras.optimizers.Adagrad(0.2)
      layer.build(None)
      layer.bind_optimizer(optimizer)
      self._train(layer, batches, optimizer)
    ids = np.arange(200)
    np.testing.assert_array_equal(_vectors(sharded, ids),
                                  _vectors(plain, ids))
    assert int(sharded.table.size()) == int(plain.table.size()) > 0
    assert sharded.admission_counts() == plain.admission_counts()
    assert sorted(sharded.live_keys().numpy()) == sorted(
        plain.live_keys().numpy())

  def test_each_key_lives_in_one_shard(self):
    layer = tm.CollisionlessEmbedding(4, capacity=100, num_shards=3)
    layer(tf.constant(np.arange(80), tf.int64), training=True)
    assert [s.capacity for s in layer.shards] == [34] * 3  # ceil(100 / 3)
    assert layer.table.capacity == 102
    sizes = [int(s.table.size()) for s in layer.shards]
    assert sum(sizes) == int(layer.table.size()) == 80
    assert min(sizes) >= 15, sizes
    found = np.stack([s.table.lookup(np.arange(80)).numpy() >= 0
                      for s in layer.shards])
    np.testing.assert_array_equal(found.sum(axis=0), np.ones(80))
    # One table to the model: its shards are not tables of their own.
    model = tf.keras.Sequential([layer])
    assert tm.models.find_tables(model) == [layer]

  def test_one_patch_for_all_shards_and_replica_of_any_shape(self):
    trainer = tm.CollisionlessEmbedding(4, capacity=60, ttl_seconds=30,
                                        num_shards=3, name="t",
                                        jit_compile=False)
    replicas = [tm.CollisionlessEmbedding(4, capacity=60, name="t",
                                          jit_compile=False),
                tm.CollisionlessEmbedding(4, capacity=60, num_shards=2,
                                          name="t", jit_compile=False)]
    rng = np.random.default_rng(1)
    optimizer = tf.keras.optimizers.Adagrad(0.3)
    trainer.build(None)
    trainer.bind_optimizer(optimizer)
    sequences = []
    for t in range(10):
      trainer.advance_clock(100 + 10 * t)
      self._train(trainer, [rng.integers(0, 50, 12)], optimizer)
      evicted = trainer.expire()
      patch = trainer.export_patch()
      sequences.append(patch.sequence)
      assert set(patch.evicted.tolist()) <= set(evicted.numpy().tolist())
      for replica in replicas:
        replica.apply_patch(patch)
    assert sequences == list(range(1, 11))
    live = trainer.live_keys().numpy()
    for replica in replicas:
      assert int(replica.table.size()) == len(live) > 0
      np.testing.assert_array_equal(_vectors(replica, live),
                                    _vectors(trainer, live))

  def test_a_full_shard_makes_the_whole_patch_full(self):
    layer = tm.CollisionlessEmbedding(2, capacity=6, num_shards=2,
                                      jit_compile=False)
    keys = tf.constant(np.arange(400), tf.int64)
    shard = layer._shard_of(keys).numpy()        # pylint: disable=protected-access
    first = np.arange(400)[shard == 0]
    second = np.arange(400)[shard == 1]
    replica = tm.CollisionlessEmbedding(2, capacity=6, num_shards=2,
                                        jit_compile=False)
    stale = np.concatenate([first[-2:], second[-2:]])
    replica.apply_patch(tm.EmbeddingPatch(keys=stale,
                                          values=np.ones([4, 2])))
    # Shard 0 (3 rows) churns through 10 keys: its removed-key log
    # overflows; shard 1 gets 2 keys.
    for i, key in enumerate(first[:10]):
      layer.advance_clock(100 + i)     # The least recently seen go first.
      layer(tf.constant([key], tf.int64), training=True)
    layer(tf.constant(second[:2], tf.int64), training=True)
    patch = layer.export_patch()
    assert patch.full
    assert sorted(patch.keys.tolist()) == sorted(
        first[7:10].tolist() + second[:2].tolist())
    replica.apply_patch(patch)
    assert sorted(replica.live_keys().numpy().tolist()) == sorted(
        patch.keys.tolist())

  def test_checkpoint_and_config(self, tmp_path):
    layer = tm.CollisionlessEmbedding(4, capacity=40, min_count=2,
                                      num_shards=2, name="user",
                                      jit_compile=False)
    layer.advance_clock(500)
    layer(tf.constant([1, 1, 2, 3, 3, 4, 4], tf.int64), training=True)
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    copy = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert copy.get_config() == layer.get_config()
    assert copy.get_config()["num_shards"] == 2
    copy.build(None)
    tf.train.Checkpoint(layer=copy).restore(path).assert_consumed()
    ids = [1, 2, 3, 4]
    np.testing.assert_array_equal(_vectors(copy, ids), _vectors(layer, ids))
    assert int(copy.clock.numpy()) == 500
    # The sketches came back too: 2 is admitted on its second sighting.
    for table in (layer, copy):
      table(tf.constant([2], tf.int64), training=True)
    assert copy.export_patch() == layer.export_patch()

  def test_invalid_num_shards(self):
    with pytest.raises(ValueError, match="num_shards=0"):
      tm.CollisionlessEmbedding(4, capacity=8, num_shards=0)
    with pytest.raises(ValueError, match="num_shards=9"):
      tm.CollisionlessEmbedding(4, capacity=8, num_shards=9)

  def test_without_a_cluster_one_shard(self):
    layer = tm.CollisionlessEmbedding(4, capacity=8)
    layer.build(None)
    assert layer.num_shards == 1 and layer.shards == []
