"""Search: the engine that answers queries over one collection (engine), weighted query terms (query)
and the textual filter grammar (where)."""
