"""Score scale of trained cascades against a soft top-k temperature.

  python benchmarks/score_scale.py WORKDIR [WORKDIR ...] [--requests 2048] [--temperatures 50,10]

For each workdir (a finished run): restores its latest checkpoint, scores the first test requests,
and prints per stage the median gap between neighbouring valid scores of a request, and the mean
NeuralSort soft top-k membership (k = gt_num) of the ground truth at each temperature. A relaxation
is sharp when the gaps are large against the temperature (docs/results.md uses this to explain why
LCRON's published temperature is too soft for the default cascade).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cascadejax.workdir import restore  # noqa: E402
from cascadejax.ops.selection import ground_truth  # noqa: E402
from cascadejax.ops import soft_topk  # noqa: E402


def main() -> None:
  """Prints one line per (workdir, stage)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--requests", type=int, default=2048)
  parser.add_argument("--temperatures", default="50,10")
  args = parser.parse_args()
  temperatures = [float(t) for t in args.temperatures.split(",")]
  for workdir in args.workdirs:
    exp, state = restore(workdir)
    batch = exp.data.splits["test"].take(slice(0, args.requests))
    scores = exp.cascade.apply({"params": state.params["cascade"]}, batch.user, batch.items).scores
    gt_num = int(exp.config.cascade.gt_num)
    truth = ground_truth(batch.label, gt_num, where=batch.mask)
    mask = np.asarray(batch.mask)
    for s, name in enumerate(exp.stage_names):
      ordered = -np.sort(np.where(mask, -np.asarray(scores[s]), np.inf), axis=-1)
      gaps = ordered[:, :-1] - ordered[:, 1:]
      row = [f"median neighbour gap {np.median(gaps[np.isfinite(gaps)]):.3f}"]
      for tau in temperatures:
        p = soft_topk(scores[s], gt_num, where=batch.mask, method="neural_sort", temperature=tau)
        row.append(f"ground-truth soft membership at tau {tau:g}: {float((p * truth).sum() / truth.sum()):.3f}")
      print(f"{workdir} | {name} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
  main()
