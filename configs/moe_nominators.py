"""Mixture-of-experts nominators at retrieval (Hron et al., NeurIPS 2021) on the two-stage synthetic default:
4 two-tower nominators with learned item pools (40 -> 20, 5 per pool) -> MLP pre-ranker (20 -> 10).

The data, pre-ranker, method (`independent`), optimizer and schedule are those of `configs/default.py`;
only the retrieval model differs (`cascadejax/models/moe_nominators.py`, docs/methods/moe_nominators.md).

Run (learned pools; then the fixed-pool variants, each nominator trained on its own pool only):
  python train.py --config configs/moe_nominators.py --workdir /tmp/cascadejax/moe_learned
  python train.py --config configs/moe_nominators.py --workdir /tmp/cascadejax/moe_random \
      --config.cascade.retrieval.model_kwargs.pools=random
  python train.py --config configs/moe_nominators.py --workdir /tmp/cascadejax/moe_category \
      --config.cascade.retrieval.model_kwargs.pools=category

Result (2-core CPU, `--config.train.steps=500`, seed 0, untuned; docs/methods/moe_nominators.md):
test recall_e2e 0.532 (learned), 0.577 (random), 0.576 (category), against 0.591 for the `two_tower`
default at 500 steps and 0.288 for random selection. The learned gate ends soft and unbalanced
(pool shares 0.40 / 0.29 / 0.19 / 0.12), which equal per-pool quotas at serving penalise.
"""

from ml_collections import ConfigDict

from configs import default


def moe_options() -> ConfigDict:
  """`config.cascade.retrieval.model_kwargs`: every option of `moe_nominators`, at its defaults."""
  return ConfigDict(dict(
      num_experts=4,  # E nominators = E item pools
      pools="learned",  # learned (softmax gate over item features) | random (id hash) | category
      hidden=(64,),  # every user tower and the shared item tower (as configs/default.py's two_tower)
      out_dim=16,
      gate_hidden=(),  # gate MLP widths; () is a linear gate
      mixture="logit",  # training score: logit (sum_e g_e s_e) | prob (logit of sum_e g_e sigmoid(s_e))
      id_feature="item_id",  # hashed by pools=random; its id padding_id marks padding at serving
      pool_feature="category",  # pools=category: pool = this feature's id mod E
      padding_id=0,  # the readers' padding id; -1: every slot is a real candidate
      dropout=0.0))


def get_config() -> ConfigDict:
  """The default cascade with `moe_nominators` at retrieval (k = 20 = 5 per pool)."""
  c = default.get_config()
  c.cascade.retrieval = ConfigDict(dict(model="moe_nominators", k=20, model_kwargs=moe_options()))
  return c
