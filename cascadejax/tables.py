"""Comparison tables: per-method means and spreads, paired differences over seeds, the Markdown
table and the plot that `cascadejax.compare` writes (rows: one dict per run, with `method`, `seed`,
the final metrics and `wall_s`, or `diverged_step` for a run that diverged)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


# The end-to-end recall from the whole corpus (`config.corpus.evaluate`), beside the logged one.
CORPUS = "corpus_recall_e2e"


def metric_names(rows: list[dict]) -> list[str]:
  """`recall_e2e` first (and `corpus_recall_e2e` where runs have it), then the other model metrics
  (random-selection references last)."""
  ends = ["recall_e2e"] + ([CORPUS] if any(CORPUS in r for r in rows) else [])
  names = sorted({k for r in rows for k in r if "/" in k or k.startswith("recall")} - set(ends))
  model = [n for n in names if not n.endswith("_random")]
  return ends + model + [n for n in names if n.endswith("_random")]


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


def _differences(rows: list[dict], method: str, reference: str, metric: str) -> dict[int, float]:
  """Per seed that both finished: `method`'s `metric` minus `reference`'s."""
  ref = {r["seed"]: r[metric] for r in rows if r["method"] == reference and metric in r}
  return {r["seed"]: r[metric] - ref[r["seed"]] for r in rows if r["method"] == method and r["seed"] in ref
          and metric in r}


def _paired(rows: list[dict], method: str, reference: str, metric: str = "recall_e2e") -> str:
  """`"+0.0123 ± 0.0040 (4/5 seeds better)"`: `method` minus `reference` on the seeds both finished."""
  diffs = np.array(list(_differences(rows, method, reference, metric).values()))
  if method == reference or not len(diffs):
    return ""
  return (f"{diffs.mean():+.4f}{_spread(diffs.std(ddof=1) if len(diffs) > 1 else 0.0, len(diffs))} "
          f"({(diffs > 0).sum()}/{len(diffs)} seeds better)")


def markdown(rows: list[dict], summary: list[dict], methods: list[str],
             references: Sequence[str] = ()) -> str:
  """The comparison table: per method the number of seeds that finished, mean +/- std (the mean
  alone for one seed), and the paired difference to each of `references` (default: the first
  method). Runs evaluated from the whole corpus also get `corpus_recall_e2e`'s paired differences
  and, below the table, on how many seeds the logged and the corpus difference to the first
  reference have the same sign (`ranking_agreement`)."""
  references = list(references) or methods[:1]
  names = metric_names(rows)
  ends = [n for n in ("recall_e2e", CORPUS) if n in names]
  stage_recalls = [n for n in names if "/recall@" in n and not n.endswith("_random")]
  cols = ends + stage_recalls
  head = ["method", "seeds", *[f"`{c}`" for c in cols],
          *[f"`{e}` minus {r} (paired)" for e in ends for r in references], "wall time"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for s in summary:
    cells = [f"`{s['method']}`", str(s["seeds"])] + [f"{s[c + '_mean']:.4f}{_spread(s[c + '_std'], s['seeds'])}"
                                    if c + "_mean" in s else "diverged" for c in cols]
    for e in ends:
      for i, ref in enumerate(references):
        diverged = _diverged(rows, s["method"]) if i == 0 and e == "recall_e2e" else ""
        cells.append("; ".join(x for x in (_paired(rows, s["method"], ref, e), diverged) if x))
    cells.append(f"{s['wall_s_mean']:.0f} s")
    lines.append("| " + " | ".join(cells) + " |")
  random = [r["recall_e2e_random"] for r in rows if "recall_e2e_random" in r]
  if random:
    lines.append(f"| random selection | | {np.mean(random):.4f} |" + " |" * (len(head) - 3))
  agreement = [ranking_agreement(rows, s["method"], references[0]) for s in summary] if CORPUS in ends else []
  if any(agreement):
    lines += ["", f"Logged and corpus rankings against `{references[0]}` (same sign of the paired "
              f"`recall_e2e` and `{CORPUS}` differences): "
              + "; ".join(f"`{s['method']}` {a}" for s, a in zip(summary, agreement) if a) + "."]
  return "\n".join(lines) + "\n"


def ranking_agreement(rows: list[dict], method: str, reference: str) -> str:
  """`"agree on 1/3 seeds (disagree: 1, 2)"`: on how many seeds `method` is on the same side of
  `reference` by the logged-candidate `recall_e2e` as by `corpus_recall_e2e`; "" without such seeds."""
  logged = _differences(rows, method, reference, "recall_e2e")
  corpus = _differences(rows, method, reference, CORPUS)
  seeds = sorted(set(logged) & set(corpus))
  if method == reference or not seeds:
    return ""
  disagree = [s for s in seeds if np.sign(logged[s]) != np.sign(corpus[s])]
  return (f"agree on {len(seeds) - len(disagree)}/{len(seeds)} seeds"
          + (f" (disagree: {', '.join(map(str, disagree))})" if disagree else ""))


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
