"""Full-corpus evaluation on 8 devices; `tests/test_eight_devices.py` runs this file in a child pytest
with 8 forced CPU devices. The item table's rows are split over every device, each takes the top k_1
of its rows and one merge combines them: the metrics must equal one device's.
"""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from ml_collections import ConfigDict

from cascadejax.experiment import Experiment
from tests.conftest import tiny_config


@pytest.mark.parametrize("top_k", ["exact", "approx"])
def test_sharded_corpus_evaluation_equals_one_device(top_k):
  assert jax.device_count() == 8, "run through tests/test_eight_devices.py (8 forced CPU devices)"
  c = tiny_config()
  c.corpus = ConfigDict(dict(top_k=top_k, chunk_size=4))  # 60 items: 8 rows per device after padding
  eight = Experiment.build(c)
  assert eight.mesh.size == 8
  params = eight.init_state().params["cascade"]
  one = Experiment.build(c, mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",)))
  got, want = eight.evaluate_corpus(params), one.evaluate_corpus(jax.device_get(params))
  assert set(got) == set(want) and 0 < want["corpus_recall_e2e"] < 1
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
