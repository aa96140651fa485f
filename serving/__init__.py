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
"""TF Serving integration of tfrs-monolith (installed as `tfrs_monolith.serving`).

Needs the `[serving]` extra (`tensorflow-serving-api`, `grpcio`):

* `ServingClient`: calls a model's signatures on a TF Serving server;
* `Sidecar`: applies the trainer's embedding patches to the served model,
  without a reload (`tfrs-monolith sidecar`);
* `warmup_requests`: TF Serving warm-up records for those signatures.
"""

try:
  import grpc  # pylint: disable=unused-import
  import tensorflow_serving.apis  # pylint: disable=unused-import
except ImportError as error:  # pragma: no cover
  raise ImportError(
      "tfrs_monolith.serving needs the [serving] extra: "
      "pip install 'tfrs-monolith[serving]'") from error

# pylint: disable=g-import-not-at-top
from tfrs_monolith.serving.client import ServingClient
from tfrs_monolith.serving.client import ServingError
from tfrs_monolith.serving.client import ServingRejected
from tfrs_monolith.serving.client import ServingUnavailable
from tfrs_monolith.serving.client import tls_credentials
from tfrs_monolith.serving.sidecar import Sidecar
from tfrs_monolith.serving.sidecar import SidecarStats
from tfrs_monolith.serving.warmup import warmup_requests

__all__ = ["ServingClient", "ServingError", "ServingRejected",
           "ServingUnavailable", "Sidecar", "SidecarStats", "tls_credentials",
           "warmup_requests"]
