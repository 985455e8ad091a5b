"""A multi-task ranker trained on its tasks through train.py: two-tower retrieval (50 -> 20) -> MMoE
ranker (20 -> 10) predicting click, like and long view, on the synthetic default.

The simulator logs likes and long views beside clicks on request (`config.data.feedback`;
`cascadejax/data/synthetic_world.py`: likes follow the user group's taste for the category, long
views the latent affinity, so the tasks disagree). The cascade method (`independent`) ranks the
MMoE's combined score; `config.multitask.weight = 1` adds each task's BCE on the exposed candidates
(`cascadejax/multitask.py`), so the task heads learn their own feedback. metrics.jsonl carries
`task/prerank/click`, `task/prerank/like`, `task/prerank/long_view` and their sum `loss/tasks`.

Run:
  python train.py --config configs/mmoe_multitask.py --workdir /tmp/cascadejax/mmoe_multitask
"""

from ml_collections import ConfigDict

from configs import default

TASKS = ("click", "like", "long_view")


def get_config() -> ConfigDict:
  """The default two-stage config with an MMoE ranker trained on three tasks."""
  c = default.get_config()
  c.data.feedback = TASKS
  c.cascade.prerank = ConfigDict(dict(model="mmoe", k=c.cascade.prerank.k, model_kwargs=ConfigDict(dict(
      tasks=TASKS, num_experts=4, expert=(64,), tower=(32,)))))
  c.multitask = ConfigDict(dict(weight=1.0, task_weights=ConfigDict(dict(click=1.0, like=1.0, long_view=1.0))))
  return c
