"""MMoE multi-task ranker (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts").

From the joint features x = [user features; mean-pooled history; item features] (`[d]`):

    e_k(x)   = Expert_k(x)                                     k = 1..E, each an MLP -> [h]
    g_t(x)   = softmax(W_t x)                                  one gate per task t, [E]
    l_t      = w_t^T Tower_t( sum_k g_t(x)_k e_k(x) ) + b_t     task logit
    score    = sum_t c_t l_t                                    combine = "logit"
             = logit( sum_t c_t sigmoid(l_t) / sum_t c_t )      combine = "prob" (c_t >= 0)

`tasks` names the tasks (by convention the `CascadeBatch.feedback` keys they predict, e.g.
click, like, long_view) and `weights` the c_t (default: all 1 / T). The stage score is what the
cascade's training method ranks; `outputs` also returns the per-task logits (the cascade's auxiliary
outputs, `CascadeOutput.aux`), which `cascadejax.multitask` turns into per-task BCE losses on
exposed candidates (`config.multitask`).

Parameters (joint width d, E experts of widths `expert` = (h1, ..., h), T tasks, towers `tower`):
    E dense(d, h1, ..., h) + T (d E + E) + T dense(h, *tower, 1)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cascadejax.embedding.collection import Embedded
from cascadejax.models.layers import MLP
from cascadejax.models.mlp import joint_features

COMBINES = ("logit", "prob")


class Experts(nn.Module):
  """E parallel MLPs on one input, as batched matmuls over stacked `[E, fan_in, fan_out]` kernels.

  Attributes:
    num_experts: E.
    hidden: widths of each expert's layers (ReLU after each).
    dropout: dropout rate after each layer.
  """

  num_experts: int
  hidden: tuple[int, ...]
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """`[..., d] -> [..., E, hidden[-1]]`."""
    e = self.num_experts
    for i, width in enumerate(self.hidden):
      fan_in = x.shape[-1]
      kernel = self.param(f"kernel_{i}", nn.initializers.lecun_normal(batch_axis=(0,)), (e, fan_in, width))
      bias = self.param(f"bias_{i}", nn.initializers.zeros, (e, width))
      if i == 0:  # one input for all experts: a single [d, E w] matmul (no broadcast copy of x)
        y = (x @ kernel.transpose(1, 0, 2).reshape(fan_in, e * width)).reshape(x.shape[:-1] + (e, width))
      else:
        y = jnp.einsum("...ed,edw->...ew", x, kernel)
      x = nn.relu(y + bias)
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class MMoE(nn.Module):
  """Multi-gate mixture-of-experts multi-task scorer.

  Attributes:
    tasks: task names (the feedback keys they are trained on).
    weights: c_t, one per task, combining task predictions into the stage score (empty: 1 / T each).
    combine: "logit" (weighted sum of task logits) or "prob" (logit of the weighted mean probability).
    num_experts: E.
    expert: widths of each expert MLP.
    tower: hidden widths of each task tower.
    dropout: dropout rate in experts and towers.
  """

  tasks: tuple[str, ...] = ("click", "like", "long_view")
  weights: tuple[float, ...] = ()
  combine: str = "logit"
  num_experts: int = 4
  expert: tuple[int, ...] = (64,)
  tower: tuple[int, ...] = (32,)
  dropout: float = 0.0

  def __post_init__(self):
    if not self.tasks or len(set(self.tasks)) != len(self.tasks):
      raise ValueError(f"mmoe model_kwargs.tasks must be distinct names, at least one, got {self.tasks!r}")
    if self.weights and len(self.weights) != len(self.tasks):
      raise ValueError(f"mmoe model_kwargs.weights needs one weight per task {self.tasks}, got {self.weights}")
    if not self.expert:
      raise ValueError("mmoe model_kwargs.expert needs at least one layer width")
    if self.combine not in COMBINES:
      raise ValueError(f"mmoe model_kwargs.combine must be one of {COMBINES}, got {self.combine!r}")
    if self.combine == "prob" and (min(self.task_weights) < 0 or sum(self.task_weights) <= 0):
      raise ValueError(f"mmoe model_kwargs.weights must be >= 0 with a positive sum for combine='prob', "
                       f"got {self.weights}")
    super().__post_init__()

  @property
  def task_weights(self) -> tuple[float, ...]:
    """c_t, one per task."""
    return tuple(self.weights) or (1.0 / len(self.tasks),) * len(self.tasks)

  def setup(self):
    """Experts, one gate and one tower (+ output layer) per task."""
    self.experts = Experts(self.num_experts, self.expert, self.dropout)
    self.gates = {t: nn.Dense(self.num_experts, name=f"gate_{t}") for t in self.tasks}
    self.towers = {t: MLP(self.tower, dropout=self.dropout, name=f"tower_{t}") for t in self.tasks}
    self.outs = {t: nn.Dense(1, name=f"out_{t}") for t in self.tasks}

  def task_logits(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[T, B, N]` logits of every task (order of `tasks`) for every candidate slot."""
    x = joint_features(emb)
    experts = self.experts(x, train=train)                            # [B, N, E, h]
    out = []
    for t in self.tasks:
      gate = jax.nn.softmax(self.gates[t](x), axis=-1)                 # [B, N, E]
      mixed = jnp.einsum("bne,bneh->bnh", gate, experts)
      out.append(self.outs[t](self.towers[t](mixed, train=train))[..., 0])
    return jnp.stack(out)

  def combine_logits(self, logits: jax.Array) -> jax.Array:
    """`[T, ...] -> [...]`: the stage score from task logits (see the module docstring)."""
    c = jnp.asarray(self.task_weights, logits.dtype).reshape((-1,) + (1,) * (logits.ndim - 1))
    if self.combine == "logit":
      return (c * logits).sum(0)
    log_c = jnp.log(c)  # -inf for zero weights drops those tasks from both sums
    return (jax.nn.logsumexp(log_c + jax.nn.log_sigmoid(logits), axis=0)
            - jax.nn.logsumexp(log_c + jax.nn.log_sigmoid(-logits), axis=0))

  def outputs(self, emb: Embedded, *, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`([B, N] stage scores, {task: [B, N] logits})`: the scores and the auxiliary outputs."""
    logits = self.task_logits(emb, train=train)
    return self.combine_logits(logits), {t: logits[i] for i, t in enumerate(self.tasks)}

  def __call__(self, emb: Embedded, *, train: bool = False) -> jax.Array:
    """`[B, N]` stage scores."""
    return self.outputs(emb, train=train)[0]


Model = MMoE
