"""Curation over a collection's stored vectors: zero-shot label runs and reviews (labels),
duplicates, clusters and outliers, evaluation against known labels (evaluate) and exports."""
