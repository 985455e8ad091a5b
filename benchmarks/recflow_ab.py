"""The RecFlow step of two checkouts, run alternately in separate processes: requests/s and their ratio.

  python benchmarks/recflow_ab.py --base /tmp/cj/recflow_base [--new .] [--rounds 3] [--variant lcron]
                                  [--repeats 3] [--calls 4]

Each round runs `benchmarks/recflow_step.py --variants <variant>` once in the base checkout and once in
the new one (the order alternating between rounds, so a load change on a shared machine falls on both
sides), each in a fresh process that imports its own checkout's `cascadejax`. It reads the requests/s
column of each run's table and prints every round's figures, the per-round ratio new / base, and the
ratio of the two medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys


def requests_per_s(output: str, variant: str) -> float:
  """The requests/s cell of `variant`'s row in a `recflow_step.py` table (found by the header)."""
  lines = [l for l in output.splitlines() if l.startswith("|")]
  if not lines:
    raise ValueError(f"no table in the output of recflow_step.py:\n{output}")
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  column = header.index("requests/s")
  for line in lines[2:]:
    cells = [c.strip() for c in line.strip("|").split("|")]
    if cells[0] == variant:
      return float(cells[column].replace(",", ""))
  raise ValueError(f"no row {variant!r} in the output of recflow_step.py:\n{output}")


def run(checkout: str, args) -> float:
  """One `recflow_step.py` process in `checkout`; its requests/s."""
  cmd = [sys.executable, os.path.join("benchmarks", "recflow_step.py"), "--variants", args.variant,
         "--repeats", str(args.repeats), "--calls", str(args.calls)]
  env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
  done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"{' '.join(cmd)} in {checkout} failed ({done.returncode}):\n{done.stderr[-3000:]}")
  return requests_per_s(done.stdout, args.variant)


def main() -> None:
  """Prints one line per round and the ratio of the medians."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--base", required=True, help="checkout of the code before the change")
  parser.add_argument("--new", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--variant", default="lcron")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--calls", type=int, default=4)
  args = parser.parse_args()
  print(f"base {os.path.abspath(args.base)}, new {os.path.abspath(args.new)}, variant {args.variant}; "
        "load average at start: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
  rates = {"base": [], "new": []}
  for r in range(args.rounds):
    order = ("base", "new") if r % 2 == 0 else ("new", "base")
    for side in order:
      rates[side].append(run(args.base if side == "base" else args.new, args))
    print(f"round {r + 1} ({' then '.join(order)}): base {rates['base'][-1]:,.0f} req/s, "
          f"new {rates['new'][-1]:,.0f} req/s, new / base {rates['new'][-1] / rates['base'][-1]:.2f}x", flush=True)
  base, new = statistics.median(rates["base"]), statistics.median(rates["new"])
  print(f"median: base {base:,.0f} req/s, new {new:,.0f} req/s, new / base {new / base:.2f}x; "
        "load average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
  main()
