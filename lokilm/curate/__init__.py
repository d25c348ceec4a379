"""Curation: the data-quality pipeline (`loki curate`), built on datatrove; see pipeline.py for the stage list."""
