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
"""Tables and plots of the real-time example's results (`realtime.py`)."""

import pathlib
import time
from typing import Dict, List


def _table(rows: List[List[str]]) -> str:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.rjust(w) if i else c.ljust(w)
                     for i, (c, w) in enumerate(zip(r, widths))).rstrip()
           for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _loop_summary(loop, batch) -> str:
  checks = loop["checks"]
  sidecar = loop["sidecar"]
  lines = [
      f"Live loop ({loop['transport']} topics): {len(loop['slices'])} "
      f"slices, {loop['impressions']:,} impressions, {loop['clicks']:,} "
      f"clicks -> {loop['examples']:,} examples "
      f"({loop['dead_letters']} dead letters)",
      f"  batch start: {batch['examples']:,} examples in the batch store, "
      f"version 1 in {batch['seconds']:.0f} s",
      f"  served AUC {loop['served_auc']:.4f} vs version 1 frozen "
      f"{loop['frozen_auc']:.4f} on the same impressions",
      f"  patches applied {int(sidecar.get('patches_applied', 0))}, rows "
      f"changed {int(sidecar.get('rows_changed', 0)):,}, replays "
      f"{int(sidecar.get('replays', 0))}, versions "
      f"{', '.join(str(v) for v in loop['versions'])}",
      "  checks: " + ", ".join(
          f"{name} {'ok' if ok else 'FAILED'}" for name, ok in checks.items()),
  ]
  return "\n".join(lines)


def _hashing_table(hashing) -> str:
  rows = [["ids with rows", "variant", "memory KiB", "user/item rows",
           "AUC", "recall@10", "collided ids user/item"]]
  for r in hashing["rows"]:
    rows.append([
        f"{r['fraction']:.3f}", r["variant"], f"{r['bytes'] / 1024:.0f}",
        f"{r['user_rows']}/{r['item_rows']}", f"{r['auc']:.4f}",
        f"{r['recall@10']:.4f}",
        f"{r['user_collision_rate']:.1%}/{r['item_collision_rate']:.1%}"])
  return _table(rows)


def _online_table(online) -> str:
  rows = [["shard", "from", "examples", "frozen AUC", "online AUC"]]
  for r in online["shards"]:
    rows.append([str(r["shard"] + 1),
                 time.strftime("%Y-%m-%d", time.gmtime(r["start"])),
                 f"{r['examples']:,}", f"{r['frozen_auc']:.4f}",
                 f"{r['online_auc']:.4f}"])
  rows.append(["all", "", f"{sum(r['examples'] for r in online['shards']):,}",
               f"{online['frozen_auc']:.4f}", f"{online['online_auc']:.4f}"])
  return _table(rows)


def _sync_table(sync) -> str:
  rows = [["sparse sync every", "served AUC", "patches (merged per sync)"]]
  for r in sync["intervals"]:
    rows.append(["0 (the trainer)" if r["minutes"] == 0 else
                 f"{r['minutes']} min", f"{r['auc']:.4f}",
                 f"{r['patches_applied']:,}"])
  return _table(rows)


def summary(results: Dict) -> str:
  """The summary printed at the end of the example."""
  parts = [f"Summary (seed {results['args']['seed']}, "
           f"{results['seconds']:.0f} s)"]
  if "loop" in results:
    parts.append(_loop_summary(results["loop"], results["batch"]))
  if "evaluation" in results:
    ev = results["evaluation"]
    holdout = ev["hashing"]["holdout_examples"]
    parts.append("Collisionless vs hashing at equal memory (train: oldest "
                 f"80 %, holdout: newest 20 %, {holdout:,} examples)\n" +
                 _hashing_table(ev["hashing"]))
    parts.append("Online vs frozen (batch on the oldest 50 %; each shard "
                 "scored before it is trained on)\n" +
                 _online_table(ev["online"]))
    parts.append(f"Sparse sync interval (newest 20 %, "
                 f"{ev['sync']['steps']:,} one-minute steps, dense sync "
                 f"every {ev['sync']['dense_hours']:g} h)\n" +
                 _sync_table(ev["sync"]))
  if "plots" in results:
    parts.append("Plots: " + ", ".join(results["plots"]))
  return "\n\n".join(parts)


def plots(results: Dict, out: pathlib.Path) -> List[str]:
  """Writes the PNG plots into `out`; returns their paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []

  def save(fig, name):
    path = pathlib.Path(out) / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

  if "loop" in results:
    loop = results["loop"]
    rows = loop["slices"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    days = [r["slice"] + 1 for r in rows]
    gain = [r["served_auc"] - r["frozen_auc"] for r in rows]
    ax.bar(days, gain, color=["C2" if g >= 0 else "C3" for g in gain])
    ax.axhline(0, color="black", lw=0.8)
    for r in rows:
      if r["new_version"]:
        ax.axvline(r["slice"] + 1.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("live slice (dotted: a new version is served after it)")
    ax.set_ylabel("AUC: served - version 1")
    ax.set_title(f"Live loop: served AUC {loop['served_auc']:.4f} vs "
                 f"frozen version 1 {loop['frozen_auc']:.4f}")
    save(fig, "live_loop_auc.png")
  if "evaluation" in results:
    ev = results["evaluation"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for variant, marker in (("collisionless", "o"), ("hashing", "s")):
      rows = [r for r in ev["hashing"]["rows"] if r["variant"] == variant]
      kib = [r["bytes"] / 1024 for r in rows]
      axes[0].plot(kib, [r["auc"] for r in rows], marker=marker,
                   label=variant)
      axes[1].plot(kib, [r["recall@10"] for r in rows], marker=marker,
                   label=variant)
    for ax, name in zip(axes, ("holdout AUC", "holdout recall@10")):
      ax.set_xlabel("embedding memory (KiB, both tables)")
      ax.set_ylabel(name)
      ax.legend()
    fig.suptitle("Equal memory: collisionless vs hashing trick")
    save(fig, "collisionless_vs_hashing.png")

    fig, ax = plt.subplots(figsize=(8, 3.6))
    shards = ev["online"]["shards"]
    x = [r["shard"] + 1 for r in shards]
    ax.plot(x, [r["online_auc"] for r in shards], marker="o",
            label=f"online (all: {ev['online']['online_auc']:.3f})")
    ax.plot(x, [r["frozen_auc"] for r in shards], marker="s",
            label=f"frozen batch (all: {ev['online']['frozen_auc']:.3f})")
    ax.set_xlabel("time shard (newer ->)")
    ax.set_ylabel("AUC")
    ax.set_title("Online training vs a frozen batch model")
    ax.legend()
    save(fig, "online_vs_frozen.png")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    rows = ev["sync"]["intervals"]
    labels = ["trainer" if r["minutes"] == 0 else f"{r['minutes']} min"
              for r in rows]
    aucs = [r["auc"] for r in rows]
    ax.bar(labels, aucs, color=["grey"] + ["C0"] * (len(rows) - 1))
    low, high = min(aucs), max(aucs)
    ax.set_ylim(low - 2 * (high - low + 1e-3), high + (high - low + 1e-3))
    for i, v in enumerate(aucs):
      ax.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("sparse sync interval")
    ax.set_ylabel("served AUC")
    ax.set_title("Fresher embeddings, better served scores")
    save(fig, "sync_interval.png")
  return written
