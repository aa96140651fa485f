"""Test set-up: Keras 2 for TFRS, quiet TensorFlow logs, small thread pools."""

import os
import sys

# TFRS requires Keras 2 (tf-keras): choose it before TensorFlow is imported.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top,unused-import

import tfrs_monolith  # pylint: disable=g-import-not-at-top,unused-import

# Shared test helpers (tests/*.py) import by name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# A real Kafka broker for the integration tests (started on first use).
from kafka_fixtures import *  # noqa: F401,F403  pylint: disable=g-import-not-at-top,wildcard-import
