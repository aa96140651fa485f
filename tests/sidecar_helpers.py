"""Shared pieces of the sidecar tests: a trainer that exports, row checks."""

import os
import time
import zlib

import numpy as np

import online_model
from tfrs_monolith import export
from tfrs_monolith import online

MODEL = "ranker"
TABLES = ("user", "item")


def make_trainer(transport, tmp_path, topics=None, **kwargs):
  """The online test model's trainer, exporting versions to tmp/base."""
  kwargs.setdefault("batch_size", 64)
  kwargs.setdefault("sparse_interval", 0.2)
  kwargs.setdefault("poll_timeout", 0.05)
  if topics is not None:
    kwargs["topics"] = topics
  return online.OnlineTrainer(
      online_model.make_model(), transport, str(tmp_path / "ckpt"),
      model_name=MODEL, export_dir=str(tmp_path / "base"),
      export_fn=export.export_saved_model, **kwargs)


def sequences(trainer):
  return {t.name: int(t.patch_sequence.numpy()) for t in trainer.tables}


def checksum(keys, values):
  order = np.argsort(keys)
  return zlib.crc32(np.asarray(keys, "<i8")[order].tobytes() +
                    np.asarray(values, "<f4")[order].tobytes())


def assert_served_equal(client, model, version=None):
  """Every live row of the trainer's tables is served with the same value
  (checksum over the keys); returns how many keys were compared."""
  total = 0
  for name in TABLES:
    live = online_model.live_rows(getattr(model, name))
    keys = np.array(sorted(live), np.int64)
    expected = np.stack([live[k] for k in keys])
    values, present = client.rows(name, keys, version=version)
    missing = int((~present).sum())
    differ = int((np.abs(values - expected).max(axis=1) > 0).sum())
    assert missing == 0 and checksum(keys, values) == checksum(
        keys, expected), (f"{name}: {missing} of {len(keys)} keys not "
                          f"served, {differ} differ")
    total += len(keys)
  return total


def run_until(sidecar, condition, timeout=60.0, what="condition"):
  """Steps `sidecar` until `condition()` holds."""
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out waiting for {what}; sidecar metrics: "
                           f"{sidecar.metrics()}")
    sidecar.step()


def version_dirs(base):
  return sorted(int(v) for v in os.listdir(base) if v.isdigit())
