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
"""TF Serving warm-up requests for the signatures tfrs-monolith exports.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord
file of `PredictionLog`s) when it loads a version, before the version
takes traffic. The first run of each signature in a new session is slow
(graph optimisation: seconds for `apply_patch`), so warming up serving and
the sidecar's signatures keeps both the first scores and the first patch
after a dense sync fast:

```python
export.export_saved_model(model, "/models/ranker/7", assets_extra={
    "tf_serving_warmup_requests": warmup_requests(
        "ranker", {"user_id": ["1"], "item_id": ["2"]},
        tables=["user", "item"])})
```

The `apply_patch` requests carry no keys: they change nothing.
"""

import os
import tempfile
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

__all__ = ["warmup_requests", "WARMUP_FILE"]

WARMUP_FILE = "tf_serving_warmup_requests"


def _log(model_name, signature, inputs):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  for name, value in inputs.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
  return prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_requests(model_name: str,
                    features: Mapping[str, Sequence],
                    tables: Sequence[str] = (),
                    repeat: int = 1) -> bytes:
  """The warm-up file's bytes: `serving_default` on `features` (`repeat`
  times), then for each of `tables` an empty `apply_patch`, an
  `embedding_rows` and a `patch_watermark` request.

  Args:
    model_name: the model name in TF Serving's config.
    features: one batch of the serving signature's inputs, `{name: values}`.
    tables: table (layer) names whose sidecar signatures to warm up.
    repeat: how many times to send the serving request.
  """
  if not isinstance(features, Mapping) or not features:
    raise ValueError("`features` must be a non-empty mapping of serving "
                     f"input name to values. Received: {features!r}")
  if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
    raise ValueError("`repeat` must be a positive integer. Received: "
                     f"repeat={repeat!r}")
  if isinstance(tables, str):
    raise TypeError("`tables` must be a sequence of table names, not a "
                    f"string. Received: tables={tables!r}")
  serving = {name: np.asarray(value) for name, value in features.items()}
  logs = [_log(model_name, "serving_default", serving)] * repeat
  for table in tables:
    name = np.array(table, dtype=object)
    logs.append(_log(model_name, "apply_patch", {
        "table": name,
        "keys": np.zeros([0], np.int64),
        "values": np.zeros([0, 0], np.float32),
        "evicted": np.zeros([0], np.int64),
        "full": np.array(False),
        "created_at": np.array(0, np.int64),
    }))
    logs.append(_log(model_name, "embedding_rows", {
        "table": name, "keys": np.zeros([0], np.int64)}))
    logs.append(_log(model_name, "patch_watermark", {"table": name}))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
      for log in logs:
        writer.write(log.SerializeToString())
    with open(path, "rb") as f:
      return f.read()
