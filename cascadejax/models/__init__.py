"""Stage models, selectable by name from the config (`config.cascade.<stage>.model`).

Every model is a Flax module mapping an `Embedded` batch to `[B, N]` scores and may be used at any
stage position. `docs/models.md` describes each one (formula, parameter count, citation).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from cascadejax.models import dcn, deepfm, din, dssm, mlp, mmoe, moe_nominators, sasrec, two_tower, wide_deep

MODELS: dict[str, type[nn.Module]] = {
    "two_tower": two_tower.Model,
    "mlp": mlp.Model,
    "dcn": dcn.Model,
    "dcn_v1": dcn.DCNv1,
    "dssm": dssm.Model,
    "din": din.Model,
    "deepfm": deepfm.Model,
    "wide_deep": wide_deep.Model,
    "mmoe": mmoe.Model,
    "moe_nominators": moe_nominators.Model,
    "sasrec": sasrec.Model,
}


def model_fields(name: str) -> tuple[str, ...]:
  """The hyperparameters (dataclass fields) model `name` accepts."""
  return tuple(f.name for f in dataclasses.fields(MODELS[name]) if f.name not in ("parent", "name"))


def get_model(name: str, kwargs: dict, *, config_key: str = "model", module_name: str | None = None) -> nn.Module:
  """Builds model `name` with hyperparameters `kwargs` (as submodule `module_name` when given).

  Raises:
    ValueError: naming `config_key` when the model or one of its hyperparameters is unknown, or a
      hyperparameter's value is refused by the model.
  """
  if name not in MODELS:
    raise ValueError(f"{config_key}: unknown model {name!r}; available: {sorted(MODELS)}")
  unknown = sorted(set(kwargs) - set(model_fields(name)))
  if unknown:
    raise ValueError(f"{config_key}_kwargs: model {name!r} has no hyperparameter(s) {unknown}; "
                     f"it takes {list(model_fields(name))}")
  try:
    return MODELS[name](**kwargs, name=module_name)
  except ValueError as e:
    raise ValueError(f"{config_key}: {e}") from e
