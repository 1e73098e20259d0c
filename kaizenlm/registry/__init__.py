"""Model, adapter and knowledge-index versions with content-addressed artifacts,
aliases (champion, challenger, ...) with an append-only alias history, and lineage."""
