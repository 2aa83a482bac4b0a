"""Ingest: from sources (folders, catalogs, URLs) to stored points. sources and catalog list what to
index, fetch downloads URLs, decode and hashes read images, batches decodes in workers, pipeline
embeds and writes (locally or with Ray: ray_run), catalog_run drives a catalog, reembed fills a new
named vector for a model upgrade."""
