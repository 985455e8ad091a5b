"""Cascade training methods, selectable by name (`config.method.name`)."""

from __future__ import annotations

from ml_collections import ConfigDict

from cascadejax.methods.arf import ARF, ARFv2
from cascadejax.methods.base import CascadeMethod
from cascadejax.methods.bce import BCE
from cascadejax.methods.dftopk import DFTopK
from cascadejax.methods.fs_ltr import FSLambdaLoss, FSRankNet
from cascadejax.methods.icc import ICC
from cascadejax.methods.independent import Independent
from cascadejax.methods.lcron import LCRON
from cascadejax.methods.rankflow import RankFlow

METHODS: dict[str, type[CascadeMethod]] = {m.name: m for m in (Independent, BCE, LCRON, RankFlow, ARF, ARFv2,
                                                               FSRankNet, FSLambdaLoss, ICC, DFTopK)}


def get_method(config: ConfigDict) -> CascadeMethod:
  """Builds the method named by `config.method.name` with its options `config.method.<name>`."""
  name = config.method.name
  if name not in METHODS:
    raise ValueError(f"config.method.name: unknown method {name!r}; available: {sorted(METHODS)}")
  options = config.method.get(name, ConfigDict()).to_dict() if name in config.method else {}
  return METHODS[name](options, stage_names=tuple(config.cascade.stages),
                       ks=tuple(int(config.cascade[s].k) for s in config.cascade.stages),
                       gt_num=int(config.cascade.gt_num))


__all__ = ["ARF", "ARFv2", "BCE", "CascadeMethod", "DFTopK", "FSLambdaLoss", "FSRankNet", "ICC", "Independent", "LCRON", "METHODS",
           "RankFlow", "get_method"]
