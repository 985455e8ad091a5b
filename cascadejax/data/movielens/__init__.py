"""MovieLens: GroupLens ratings with a logged cascade simulated on them, read into `CascadeData`.

`ratings.py` reads and checks the GroupLens files (`files.py` decodes them), `cascade.py` simulates
the logged cascade on the interactions (see its docstring for the protocol).
"""

from cascadejax.data.movielens.cascade import check_config, fit_teachers, load, simulate
from cascadejax.data.movielens.ratings import DEFAULT_DIR, ROOT, MovieLens, read, resolve_dir, source_files

__all__ = ["DEFAULT_DIR", "MovieLens", "ROOT", "check_config", "fit_teachers", "load", "read", "resolve_dir",
           "simulate", "source_files"]
