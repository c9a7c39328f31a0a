"""Corpus manifest, preparation to ArrayRecord shards, templates and the Grain input pipeline."""
