"""Every training method, at its defaults, against the numbers of its published reference code.

Each `.npz` in `$CASCADEJAX_REFERENCE_FIXTURES` (default `../shared/fixtures/kwai_lcron`, whose
README describes the format) holds one batch of stage scores, the reference's total loss, its
named terms and the gradients of both with respect to every stage's score. The method named by the
file runs at its defaults, given only what the reference itself consumed: the label values it
trained on (`ref_label`), its slot order (`ref_order`, which ICC's tied pairs depend on) and the
cascade's configured k's (`settings.configured_ks`, else `ks`). Loss, terms and gradients must
match at the README's tolerances; a file that cannot be run fails.
"""

from __future__ import annotations

import functools
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascadejax.data.schema import CascadeBatch
from cascadejax.methods import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("CASCADEJAX_REFERENCE_FIXTURES",
                          os.path.join(ROOT, "..", "shared", "fixtures", "kwai_lcron"))
FILES = sorted(glob.glob(os.path.join(FIXTURES, "*.npz")))
STAGES = ("retrieval", "prerank", "rank")


def test_the_fixture_directory_holds_files():
  assert FILES, (f"no .npz files in {FIXTURES}: set CASCADEJAX_REFERENCE_FIXTURES to the directory of "
                 "the reference fixtures")


def our_term(method: str, num_stages: int, name: str, groups: list[str]) -> str:
  """The aux key of this project's method that holds the reference's term `name`."""
  if method == "lcron":
    return "loss/joint" if name == "l_joint" else "loss/relax_" + {"recall": "retrieval"}.get(
        name[len("l_relax_"):], name[len("l_relax_"):])
  stage = next(s for s in STAGES if name.startswith(s + "_"))
  rest = name[len(stage) + 1:]
  if method in ("arf", "arf_v2"):
    return {"global_loss": f"loss/global_{stage}", "local_loss": f"loss/relax_{stage}",
            "loss": f"loss/{stage}"}[rest]
  if method == "rankflow":
    return {"loss": f"loss/self_{stage}", "mse_loss": f"loss/distill_{stage}",
            "rank_loss": f"loss/pair_{stage}"}[rest]
  if method == "fs_ranknet" and rest != "loss":
    return f"loss/{stage}/level{groups.index(rest[:-len('_rank_loss')])}"
  assert rest == "loss", name
  return f"loss/{stage}"


def rankflow_terms(num_stages: int, names: list[str]) -> list[str]:
  """Two-stage RankFlow names its terms after the loss kind only; give them their stage."""
  if num_stages != 2:
    return names
  return [{"retrieval_loss": "retrieval_loss", "prerank_loss": "prerank_loss",
           "mse_loss": "retrieval_mse_loss", "rank_loss": "retrieval_rank_loss"}[n] for n in names]


def load(path: str):
  """The fixture as (settings, batch in reference slot order, scores, ks, reference arrays)."""
  f = dict(np.load(path, allow_pickle=False))
  settings = json.loads(str(f["settings"]))
  order = f["ref_order"]
  take = lambda a: np.take_along_axis(a, np.broadcast_to(order, a.shape), axis=-1)
  batch = CascadeBatch(user={}, items={}, stage=jnp.asarray(take(f["stage"]), jnp.int32),
                       label=jnp.asarray(take(f["ref_label"]), jnp.float32),
                       mask=jnp.asarray(take(f["mask"]), bool))
  scores = jnp.asarray(take(f["scores"]), jnp.float32)
  ks = tuple(int(k) for k in settings.get("configured_ks", f["ks"]))
  return settings, batch, scores, ks, f


@functools.lru_cache(maxsize=None)
def compiled(name: str, num_stages: int, ks: tuple[int, ...], gt_num: int):
  """The method at its defaults and one jitted function giving its loss, aux, the gradients of the
  loss (scores, method parameters) and the gradient of every aux value (one compilation per
  method and shape: the scenarios of a method share it)."""
  method = METHODS[name]({}, stage_names=STAGES[:num_stages], ks=ks, gt_num=gt_num)

  def run(scores, params, batch):
    return method.loss(params, scores, batch, rng=jax.random.key(1))

  def everything(scores, params, batch):
    (loss, aux), grads = jax.value_and_grad(run, argnums=(0, 1), has_aux=True)(scores, params, batch)
    return loss, aux, grads, jax.jacrev(lambda s: run(s, params, batch)[1])(scores)

  return method, jax.jit(everything)


def back_to_fixture_order(grad: np.ndarray, order: np.ndarray) -> np.ndarray:
  """`[S, B, N]` gradient in reference slot order -> fixture slot order."""
  out = np.zeros_like(grad)
  np.put_along_axis(out, np.broadcast_to(order, grad.shape), grad, axis=-1)
  return out


def assert_grad_close(actual, expected, *, icc: bool, what: str):
  scale = float(np.abs(expected).max())
  if icc:
    tol = 2e-3 * scale + 1e-12
  else:
    tol = 1e-5 * scale + 1e-4 * np.abs(expected) + 1e-12
  bad = np.abs(actual - expected) > tol
  assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} entries differ; worst |diff| "
                         f"{np.abs(actual - expected).max():.3g} (max |grad| {scale:.3g})")


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p)[:-4] for p in FILES])
def test_method_at_its_defaults_reproduces_the_reference(path):
  settings, batch, scores, ks, f = load(path)
  name, num_stages = settings["method"], int(settings["stages"])
  groups = settings.get("groups_shallowest_first", [])
  method, run = compiled(name, num_stages, ks, int(f["gt_num"]))
  loss, aux, (grad, grad_params), term_grads = run(scores, method.init(jax.random.key(0)), batch)
  np.testing.assert_allclose(float(loss), float(f["loss"]), rtol=1e-5, err_msg="loss")
  order = f["ref_order"]
  assert_grad_close(back_to_fixture_order(np.asarray(grad), order), f["grad"], icc=name == "icc", what="grad")

  refs = [k[len("term_"):] for k in f if k.startswith("term_")]
  ours = rankflow_terms(num_stages, refs) if name == "rankflow" else refs
  for ref, mine in zip(refs, ours):
    key = our_term(name, num_stages, mine, groups)
    assert key in aux, f"no aux {key!r} for the reference term {ref!r}; aux has {sorted(aux)}"
    np.testing.assert_allclose(float(aux[key]), float(f[f"term_{ref}"]), rtol=1e-5, atol=1e-7,
                               err_msg=f"term {ref} ({key})")
    if f"grad_{ref}" in f:
      assert_grad_close(back_to_fixture_order(np.asarray(term_grads[key]), order), f[f"grad_{ref}"],
                        icc=False, what=f"grad of term {ref} ({key})")

  # Learned loss weights: one per stage, in stage order; the reference's unused ones get no gradient.
  for key in (k for k in f if k.startswith("grad_param_")):
    weight = key[len("grad_param_"):]
    expected = float(f[key])
    if weight.endswith("_local_weight"):
      assert expected == 0.0, f"{key}: the reference's local weight is unused, its gradient is {expected}"
      continue
    stage = {"recall": "retrieval"}.get(weight.split("_")[0], weight.split("_")[0])
    np.testing.assert_allclose(float(grad_params["w"][STAGES.index(stage)]), expected, rtol=1e-5, atol=1e-7,
                               err_msg=key)
