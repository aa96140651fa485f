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
"""Helpers shared by the benchmarks: data, timing and the JSON result line.

Import this module before TensorFlow: it imports `tfrs_monolith` first, which
selects Keras 2 (tf-keras) as TensorFlow Recommenders needs.
"""

import json
import os
import platform
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tfrs_monolith as tm  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

# Generated keys stay in [1, 2**62): clear of 0 and of the negative sentinel
# keys that `tf.lookup.experimental.DenseHashTable` needs (-1 and -2).
KEY_LOW = 1
KEY_HIGH = 2**62


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
  """`n` distinct random int64 keys in [KEY_LOW, KEY_HIGH), random order."""
  keys = np.unique(rng.integers(KEY_LOW, KEY_HIGH, size=n + n // 100 + 16,
                                dtype=np.int64))
  while keys.size < n:  # Practically never: 2**62 values, n << 2**31.
    more = rng.integers(KEY_LOW, KEY_HIGH, size=n, dtype=np.int64)
    keys = np.unique(np.concatenate([keys, more]))
  rng.shuffle(keys)
  return keys[:n]


def zipf_ranks(rng: np.random.Generator, a: float, n: int,
               size: int) -> np.ndarray:
  """`size` Zipf(a) ranks in [0, n): rank 0 is the most frequent.

  Draws from `numpy`'s unbounded Zipf law and redraws values above `n`, i.e.
  samples the Zipf law truncated to `n` ranks.
  """
  out = np.empty(size, np.int64)
  filled = 0
  while filled < size:
    draw = rng.zipf(a, size=2 * (size - filled) + 1024)
    draw = draw[draw <= n][:size - filled]
    out[filled:filled + draw.size] = draw - 1
    filled += draw.size
  return out


def turn_order(names: Sequence[str], round_index: int) -> List[str]:
  """`names` rotated by `round_index`: each name leads one round in turn, so
  a background load that comes and goes affects all of them alike."""
  shift = round_index % len(names)
  return list(names[shift:]) + list(names[:shift])


def time_interleaved(
    fns: Dict[str, Callable[[], object]], warmup: int, repeats: int
) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
  """Times each zero-argument callable `repeats` times, in interleaved rounds.

  Every round calls each function once, in an order rotated by one from the
  previous round, so a background load that comes and goes affects all of
  them alike. Each call's result is brought to NumPy, so its work is done
  when the clock stops.

  Args:
    fns: name -> callable returning a tensor or a nest of tensors.
    warmup: untimed calls of each function first (tracing, compilation).
    repeats: timed rounds.

  Returns:
    `(wall, cpu)`: name -> list of `repeats` durations in seconds, of wall
    time and of process CPU time (all threads).
  """
  def run(fn):
    tf.nest.map_structure(lambda t: t.numpy() if tf.is_tensor(t) else t,
                          fn())

  for fn in fns.values():
    for _ in range(warmup):
      run(fn)
  names = list(fns)
  wall = {name: [] for name in names}
  cpu = {name: [] for name in names}
  for r in range(repeats):
    for name in turn_order(names, r):
      start = time.perf_counter()
      cpu_start = time.process_time()
      run(fns[name])
      cpu[name].append(time.process_time() - cpu_start)
      wall[name].append(time.perf_counter() - start)
  return wall, cpu


def _git(*args: str) -> Optional[str]:
  """Output of a git command run in this repository, or None."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    return subprocess.run(["git", "-C", root, *args], check=True,
                          capture_output=True, text=True,
                          timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


# The library as imported at start, in case the checkout changes meanwhile.
_GIT_COMMIT = _git("rev-parse", "--short", "HEAD")
_GIT_STATUS = _git("status", "--porcelain", "--", "tfrs_monolith", "beam",
                   "serving")


def environment() -> Dict[str, object]:
  """Facts about the machine and versions, for the JSON result line."""
  threading = tf.config.threading
  return {
      "cpu_count": os.cpu_count(),
      "tf_version": tf.__version__,
      "tfrs_monolith_version": tm.__version__,
      "python_version": platform.python_version(),
      "inter_op_threads": threading.get_inter_op_parallelism_threads(),
      "intra_op_threads": threading.get_intra_op_parallelism_threads(),
      "loadavg_1min": round(os.getloadavg()[0], 2),
      "git_commit": _GIT_COMMIT,
      # Whether the library sources differed from that commit at start.
      "library_modified": (None if _GIT_STATUS is None else
                           bool(_GIT_STATUS)),
  }


def emit(result: Dict[str, object]) -> None:
  """Prints the single machine-readable JSON result line on stdout."""
  print(json.dumps({**result, **environment()}, sort_keys=False), flush=True)
