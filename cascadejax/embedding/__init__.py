"""Embedding tables: the collection every stage model reads, and row-sharded tables over a mesh.

Modules, each depending only on those above it:
  layout.py      `TableSharding`: how a table's rows are split over mesh axes.
  routing.py     ids to the shards that own their rows and rows (and gradients) back.
  sharded.py     routed lookups, per-row gradients, row-wise updates of a sharded table.
  row_rules.py   the row-wise optimizer rules (Adagrad, Adam, AdamW, SGD) of sharded tables.
  collection.py  `EmbeddingCollection` (a Flax module) -> `Embedded`, the stage models' input.
  update.py      one update interface for a run's parameters: dense optax, or row-sparse tables.
"""
