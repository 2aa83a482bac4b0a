"""clipsearch indexing and search engine, as a library."""
