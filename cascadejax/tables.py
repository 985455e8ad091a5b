"""Comparison tables: per-method means and spreads, paired differences over seeds, the Markdown
table and the plot that `cascadejax.compare` writes (rows: one dict per run, with `method`, `seed`,
the final metrics and `wall_s`, or `diverged_step` for a run that diverged)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def metric_names(rows: list[dict]) -> list[str]:
  """`recall_e2e` first, then the other model metrics (random-selection references last)."""
  names = sorted({k for r in rows for k in r if "/" in k or k.startswith("recall")} - {"recall_e2e"})
  model = [n for n in names if not n.endswith("_random")]
  return ["recall_e2e"] + model + [n for n in names if n.endswith("_random")]


def summarize(rows: list[dict], methods: list[str]) -> list[dict]:
  """Mean and sample std of every metric and of the wall time, per method."""
  out = []
  for m in methods:
    runs = [r for r in rows if r["method"] == m]
    finished = [r for r in runs if "diverged_step" not in r]
    entry = {"method": m, "seeds": len(finished), "diverged": len(runs) - len(finished)}
    for name in metric_names(rows) + ["wall_s"]:
      values = np.array([r[name] for r in (runs if name == "wall_s" else finished) if name in r], float)
      if len(values):  # a method whose every seed diverged has no metric means (empty CSV cells)
        entry[f"{name}_mean"] = float(values.mean())
        entry[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out.append(entry)
  return out


def _diverged(rows: list[dict], method: str) -> str:
  """`"diverged on 2/5 seeds (at steps 41, 57)"`, or "" when no seed of `method` diverged."""
  runs = [r for r in rows if r["method"] == method]
  steps = [int(r["diverged_step"]) for r in runs if "diverged_step" in r]
  return f"diverged on {len(steps)}/{len(runs)} seeds (at steps {', '.join(map(str, steps))})" if steps else ""


def _spread(std: float, n: int) -> str:
  """` ± std` of n values; one value has no spread to show."""
  return f" ± {std:.4f}" if n > 1 else ""


def _paired(rows: list[dict], method: str, reference: str) -> str:
  """`"+0.0123 ± 0.0040 (4/5 seeds better)"`: `method` minus `reference` on the seeds both finished."""
  ref = {r["seed"]: r["recall_e2e"] for r in rows if r["method"] == reference and "recall_e2e" in r}
  diffs = np.array([r["recall_e2e"] - ref[r["seed"]] for r in rows
                    if r["method"] == method and r["seed"] in ref and "recall_e2e" in r])
  if method == reference or not len(diffs):
    return ""
  return (f"{diffs.mean():+.4f}{_spread(diffs.std(ddof=1) if len(diffs) > 1 else 0.0, len(diffs))} "
          f"({(diffs > 0).sum()}/{len(diffs)} seeds better)")


def markdown(rows: list[dict], summary: list[dict], methods: list[str],
             references: Sequence[str] = ()) -> str:
  """The comparison table: per method the number of seeds that finished, mean +/- std (the mean
  alone for one seed), and the paired difference to each of `references` (default: the first
  method)."""
  references = list(references) or methods[:1]
  stage_recalls = [n for n in metric_names(rows) if "/recall@" in n and not n.endswith("_random")]
  cols = ["recall_e2e"] + stage_recalls
  head = ["method", "seeds", *[f"`{c}`" for c in cols], *[f"`recall_e2e` minus {r} (paired)" for r in references],
          "wall time"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for s in summary:
    cells = [f"`{s['method']}`", str(s["seeds"])] + [f"{s[c + '_mean']:.4f}{_spread(s[c + '_std'], s['seeds'])}"
                                    if c + "_mean" in s else "diverged" for c in cols]
    for i, ref in enumerate(references):
      diverged = _diverged(rows, s["method"]) if i == 0 else ""
      cells.append("; ".join(x for x in (_paired(rows, s["method"], ref), diverged) if x))
    cells.append(f"{s['wall_s_mean']:.0f} s")
    lines.append("| " + " | ".join(cells) + " |")
  random = [r["recall_e2e_random"] for r in rows if "recall_e2e_random" in r]
  if random:
    lines.append(f"| random selection | | {np.mean(random):.4f} |" + " |" * (len(head) - 3))
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], methods: list[str], path: str) -> bool:
  """Per-method `recall_e2e` of every seed with its mean; False if matplotlib is not installed."""
  try:
    import matplotlib  # noqa: PLC0415 (optional dependency)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
  except ImportError:
    return False
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(methods), 3.2))
  for i, m in enumerate(methods):
    values = [r["recall_e2e"] for r in rows if r["method"] == m and "recall_e2e" in r]
    if _diverged(rows, m):
      ax.annotate("some seeds diverged" if values else "diverged", (i, 0.02), xycoords=("data", "axes fraction"),
                  ha="center", fontsize=7, color="red")
    if not values:
      continue
    ax.scatter(np.full(len(values), i), values, s=14, alpha=0.7)
    ax.errorbar(i + 0.18, np.mean(values), yerr=np.std(values, ddof=1) if len(values) > 1 else 0,
                fmt="o", color="black", capsize=3)
  ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
  ax.set_ylabel("test recall_e2e")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
