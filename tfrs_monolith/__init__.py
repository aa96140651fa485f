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
"""tfrs-monolith: collisionless, expiring embeddings and real-time sync for
TensorFlow Recommenders."""

import os as _os

# TensorFlow Recommenders needs Keras 2 (tf-keras). Choose it before
# TensorFlow is first imported; if TensorFlow is already loaded with Keras 3,
# the check below says what to do.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as _tf  # pylint: disable=g-import-not-at-top

if not _tf.keras.__name__.startswith("tf_keras"):
  raise ImportError(
      "tfrs_monolith needs Keras 2 (tf-keras), like TensorFlow Recommenders, "
      "but TensorFlow was imported with Keras 3. Import tfrs_monolith before "
      "tensorflow, or set TF_USE_LEGACY_KERAS=1 in the environment.")

# pylint: disable=g-import-not-at-top
from tfrs_monolith import admission
from tfrs_monolith import distribute
from tfrs_monolith import embedding
from tfrs_monolith import hashing
from tfrs_monolith import models
from tfrs_monolith import patch
from tfrs_monolith import sampling
from tfrs_monolith import table
from tfrs_monolith.admission import CountMinSketch
from tfrs_monolith.embedding import CollisionlessEmbedding
from tfrs_monolith.models import Model
from tfrs_monolith.patch import EmbeddingPatch
from tfrs_monolith.patch import PatchError
from tfrs_monolith.patch import PatchKeys
from tfrs_monolith.patch import merge_patches
from tfrs_monolith.table import CuckooHashTable

__version__ = "0.1.0"

__all__ = [
    "CollisionlessEmbedding", "CountMinSketch", "CuckooHashTable",
    "EmbeddingPatch", "Model", "PatchError", "PatchKeys", "__version__",
    "merge_patches",
]
