"""The pair kernel behind every pairwise loss: its cyclic, dense and top-n row paths, any list tile,
unroll, leading dims and vmap agree (the cyclic path is checked against rax in tests/test_losses.py);
the cyclic path's memory stays below one pair tensor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax

from cascadejax import losses
from cascadejax.ops.lambdarank import PairSpec, tiled_pairwise_loss
from tests.test_losses import ATOL, RTOL, _lw, inputs


KERNEL_SPECS = {
    "lambdarank@3": PairSpec(lambdarank=1.0, topn=3, scale=5.0),
    "lambdaloss++@3": PairSpec(lambdarank=1.0, ndcg2=10.0, topn=3, scale=5.0),
    "lambdaloss": PairSpec(ndcg2=1.0),
    "ranknet_hinge": PairSpec(pair_loss="hinge", margin=0.5),
}


@pytest.mark.parametrize("spec_name", list(KERNEL_SPECS))
@pytest.mark.parametrize("n", [1, 7, 8])
def test_kernel_independent_of_tiling(n, spec_name):
  """Odd and even list sizes (the d = n / 2 offset pairs each pair once), any list tile, unroll and path
  (the cyclic scan is checked against rax above), arbitrary leading dims and vmap give the same losses
  and gradients."""
  s, y, where, w = inputs(seed=8, shape=(3, 5, n))
  gains = losses.ndcg_gains(y, where=where, weights=w, topn=3)
  spec = KERNEL_SPECS[spec_name]
  run = lambda s, **kw: tiled_pairwise_loss(s, y, where=where, weights=w, gains=gains, spec=spec, **kw)
  list_variants = [dict(path="cyclic"), dict(path="cyclic", list_tile=2, unroll=3),
                   dict(path="dense"), dict(path="dense", list_tile=4)]
  list_variants += [dict(path="topn_rows", list_tile=4)] if n > 3 and spec_name == "lambdarank@3" else []
  item_variants = [dict(path="cyclic", per_item=True), dict(path="dense", per_item=True, list_tile=2)]
  per_list = jax.vmap(lambda s, y, v, w, g: tiled_pairwise_loss(s, y, where=v, weights=w, gains=g, spec=spec))
  value_and_grad = lambda kw: jax.value_and_grad(lambda s: (run(s, **kw) ** 2).sum())(s)
  results = jax.jit(lambda s: ([value_and_grad(kw) for kw in list_variants],
                               [value_and_grad(kw) for kw in item_variants],
                               per_list(s, y, where, w, gains), run(s)))(s)
  lists, items, vmapped, batched = results
  for group in (lists, items):
    for got in group[1:]:
      np.testing.assert_allclose(got[0], group[0][0], rtol=RTOL, atol=ATOL)
      np.testing.assert_allclose(got[1], group[0][1], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(vmapped, batched, rtol=RTOL, atol=ATOL)
  with pytest.raises(ValueError, match="path must be one of"):
    run(s, path="blocked")


def test_kernel_never_materialises_pair_tensors():
  """Compiled forward+backward temp memory stays far below one [B, n, n] float32 tensor (rax needs several)."""
  b, n = 64, 256
  s = jnp.zeros((b, n))
  y = jnp.zeros((b, n))
  pair_bytes = b * n * n * 4
  for fn in (losses.lambdaloss,):
    compiled = jax.jit(jax.value_and_grad(lambda s: fn(s, y))).lower(s).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < pair_bytes / 8
  rax_fn = _lw(rax.dcg_lambdaweight, normalize=True)
  compiled = jax.jit(jax.value_and_grad(lambda s: rax_fn(s, y))).lower(s).compile()
  assert compiled.memory_analysis().temp_size_in_bytes > pair_bytes
