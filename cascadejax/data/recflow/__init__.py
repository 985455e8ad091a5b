"""RecFlow (Kuaishou, ICLR 2025): full-flow logs of a production cascade, read into `CascadeData`.

`reader.py` turns the day files into requests (see its docstring for the protocol), `config.py` holds
RecFlow's groups, fields and labels and checks a `config.data` section for it, `files.py` reads the
file formats with checks and `history.py` the behaviour sequences.
"""

from cascadejax.data.recflow.config import (BINARY_FEEDBACK, DEFAULT_GROUPS, FEEDBACK, GROUPS, check_config,
                                            groups, reference_labels)
from cascadejax.data.recflow.reader import build, load, read_day

__all__ = ["BINARY_FEEDBACK", "DEFAULT_GROUPS", "FEEDBACK", "GROUPS", "build", "check_config", "groups", "load",
           "read_day", "reference_labels"]
