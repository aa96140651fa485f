"""Tests of the stand-in model server (`tfrs_monolith.serving.model_server`) on exports.

One export of `online_model.make_model()` and one server are shared by the
module; the tests run in file order (version 2 and the broken version 3
appear part-way through).
"""

import hashlib
import os
import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import prediction_log_pb2

from tfrs_monolith.serving import model_server
import online_model
import tfrs_monolith as tm
from tfrs_monolith import export

MODEL = "ranker"
MAX_REQUEST_BYTES = 1 << 16
DIM = 8


def _features(users, items):
  return {"user_id": np.array(users, dtype=object).astype(bytes),
          "item_id": np.array(items, dtype=object).astype(bytes)}


def _keys(ids):
  return tm.hashing.to_keys(list(ids)).numpy()


def _patch_inputs(table, ids, value):
  return {"table": np.array(table.encode()),
          "keys": _keys(ids),
          "values": np.full([len(ids), DIM], value, np.float32),
          "evicted": np.zeros([0], np.int64),
          "full": np.array(False),
          "created_at": np.array(0, np.int64)}


def _apply_in_process(model, ids, value):
  model.user.apply_patch(tm.EmbeddingPatch(
      keys=_keys(ids), values=np.full([len(ids), DIM], value, np.float32)))


def _score(model, users, items):
  return model({k: tf.constant(v) for k, v in
                _features(users, items).items()}).numpy()


def _rpc_error(call, *args, **kwargs):
  with pytest.raises(grpc.RpcError) as raised:
    call(*args, **kwargs)
  return raised.value


def _publish(base, version, source, warmup=()):
  """Copies `source` as `base/<version>` (atomically), with warm-up requests."""
  staging = os.path.join(base, f".{version}.tmp")
  shutil.copytree(source, staging)
  if warmup:
    with tf.io.TFRecordWriter(
        os.path.join(staging, model_server.WARMUP_FILE)) as writer:
      for request in warmup:
        writer.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(
                request=request)).SerializeToString())
  os.rename(staging, os.path.join(base, str(version)))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return str(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def server(base):
  """The stand-in, started on the empty base path (it imports TensorFlow
  while `model` builds and exports version 1)."""
  with model_server.ModelServer(
      base, MODEL, channel_arguments={
          "grpc.max_receive_message_length": MAX_REQUEST_BYTES}) as server:
    yield server
    assert server.stop() == 0                     # SIGTERM: a clean exit.


@pytest.fixture(scope="module")
def model(base, server):
  """The model that version 1 was exported from, once it is served."""
  model = online_model.make_model()
  _score(model, ["1"], ["3"])                     # Builds the layers.
  rng = np.random.default_rng(0)
  users = [str(k) for k in range(20)]
  items = [str(k) for k in range(10)]
  for layer, ids in ((model.user, users), (model.item, items)):
    layer.apply_patch(tm.EmbeddingPatch(
        keys=_keys(ids),
        values=rng.normal(size=[len(ids), DIM]).astype(np.float32)))
  export.export_saved_model(model, os.path.join(base, "1"))
  assert server.wait_ready(version=1) == 1
  return model


def test_serves_the_export_as_available(model, server):
  del model  # Exported and served.
  assert server.status() == {1: "AVAILABLE"}
  (entry,) = server.model_status(version=1).model_version_status
  assert entry.status.error_code == 0
  request = get_model_metadata_pb2.GetModelMetadataRequest()
  request.model_spec.name = MODEL
  request.metadata_field.append("signature_def")
  response = server.prediction_stub.GetModelMetadata(request, timeout=10)
  signatures = get_model_metadata_pb2.SignatureDefMap()
  response.metadata["signature_def"].Unpack(signatures)
  assert {"serving_default", "apply_patch"} <= set(signatures.signature_def)
  assert response.model_spec.version.value == 1


def test_scores_equal_the_models(model, server):
  users, items = ["1", "2", "3", "19", "unseen"], ["3", "3", "0", "9", "4"]
  response = server.predict_response(_features(users, items))
  assert response.model_spec.name == MODEL
  assert response.model_spec.version.value == 1
  assert response.model_spec.signature_name == "serving_default"
  served = tf.make_ndarray(response.outputs["outputs"])
  assert served.shape == (5, 1)
  np.testing.assert_allclose(served, _score(model, users, items), rtol=1e-5)


def test_apply_patch_changes_that_user_only_and_is_logged(model, server):
  users, items = ["7", "8"], ["3", "3"]
  before = server.predict(_features(users, items))["outputs"][:, 0]
  inputs = _patch_inputs("user", ["7"], 0.5)
  outputs = server.predict(inputs, signature="apply_patch")
  assert outputs["changed"] == 1
  after = server.predict(_features(users, items))["outputs"][:, 0]
  assert after[0] != before[0] and after[1] == before[1]
  _apply_in_process(model, ["7"], 0.5)
  np.testing.assert_allclose(after, _score(model, users, items)[:, 0],
                             rtol=1e-5)

  server.predict(inputs, signature="apply_patch")   # A duplicate.
  request = model_server.predict_request(MODEL, inputs, "apply_patch")
  digest = hashlib.sha256()
  for name in sorted(request.inputs):
    digest.update(request.inputs[name].SerializeToString(deterministic=True))
  applied = server.applied()
  assert len(applied) == 2
  assert applied[0] == {"sha256": digest.hexdigest(), "table": "user",
                        "keys": 1, "changed": 1, "version": 1}
  assert applied[1]["sha256"] == applied[0]["sha256"]


def test_errors_have_tf_serving_codes(model, server):
  del model  # Served.
  features = _features(["1"], ["3"])
  error = _rpc_error(server.prediction_stub.Predict,
                     model_server.predict_request("other", features),
                     timeout=10)
  assert error.code() == grpc.StatusCode.NOT_FOUND
  assert "Servable not found for request" in error.details()
  error = _rpc_error(server.predict, features, version=5)
  assert error.code() == grpc.StatusCode.NOT_FOUND
  error = _rpc_error(server.predict, {"user_id": features["user_id"]})
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "Missing but required: {item_id}" in error.details()
  error = _rpc_error(server.predict, dict(features, extra=np.ones([1])))
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "Sent extra: {extra}" in error.details()
  error = _rpc_error(server.predict, features, signature="nope")
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
  error = _rpc_error(server.predict, dict(features, user_id=np.ones([1])))
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
  # A TensorFlow error (the signature's tf.debugging.Assert) keeps its code.
  error = _rpc_error(server.predict, _patch_inputs("bogus", ["1"], 0.0),
                     signature="apply_patch")
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "no table named" in error.details() and "bogus" in error.details()
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = "other"
  error = _rpc_error(server.model_stub.GetModelStatus, request, timeout=10)
  assert error.code() == grpc.StatusCode.NOT_FOUND
  assert len(server.applied()) == 2               # Failures are not logged.


def test_request_over_the_size_limit_is_refused(model, server):
  del model  # Served.
  users = [f"user-{k}" for k in range(MAX_REQUEST_BYTES // 8)]
  error = _rpc_error(server.predict, _features(users, users))
  assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
  assert server.predict(_features(["1"], ["3"]))["outputs"].shape == (1, 1)


def test_newer_version_is_warmed_up_and_replaces_the_old(model, server, base):
  warmup = [model_server.predict_request(
      MODEL, _patch_inputs("user", ["9"], 0.25), "apply_patch"),
            model_server.predict_request(MODEL, _features(["9"], ["3"]))]
  _publish(base, 2, os.path.join(base, "1"), warmup)
  assert server.wait_ready(version=2, timeout=30) == 2
  model_server.wait_for(lambda: server.status()[1] == "END", 10)
  assert server.status() == {1: "END", 2: "AVAILABLE"}
  _apply_in_process(model, ["9"], 0.25)
  users, items = ["9", "1"], ["3", "3"]
  response = server.predict_response(_features(users, items))
  assert response.model_spec.version.value == 2
  np.testing.assert_allclose(tf.make_ndarray(response.outputs["outputs"]),
                             _score(model, users, items), rtol=1e-5)
  error = _rpc_error(server.predict, _features(users, items), version=1)
  assert error.code() == grpc.StatusCode.NOT_FOUND
  assert len(server.applied()) == 2               # Warm-up is not logged.


def test_broken_version_is_reported_and_not_served(model, server, base):
  del model  # Served.
  broken = os.path.join(base, ".broken")
  os.makedirs(broken)
  with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
    f.write(b"not a SavedModel")
  os.rename(broken, os.path.join(base, "3"))
  try:
    model_server.wait_for(lambda: server.status().get(3) == "END", 30)
    (entry,) = server.model_status(version=3).model_version_status
    assert entry.status.error_code != 0 and entry.status.error_message
    assert server.status()[2] == "AVAILABLE"
    response = server.predict_response(_features(["1"], ["3"]))
    assert response.model_spec.version.value == 2
  finally:
    shutil.rmtree(os.path.join(base, "3"))


def test_kill_and_restart_on_the_same_port(model, server):
  users, items = ["9", "2"], ["3", "0"]
  expected = _score(model, users, items)
  address = server.address
  server.kill()
  error = _rpc_error(server.predict, _features(users, items), timeout=5)
  assert error.code() == grpc.StatusCode.UNAVAILABLE
  server.restart()
  assert server.address == address
  assert server.wait_ready() == 2
  assert server.status() == {2: "AVAILABLE"}
  # The restarted server replayed version 2's warm-up patch.
  np.testing.assert_allclose(server.predict(_features(users, items))[
      "outputs"], expected, rtol=1e-5)
