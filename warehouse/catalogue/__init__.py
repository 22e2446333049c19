"""The image catalogue: one row per filed image (`rows`), the parts a loader run writes and the
duplicate rule (`run`), the parts merged into one table (`merge`), selections of it
(`selection`), releases (`releases`), and the catalogue for notebooks (`open`, `views`)."""

from __future__ import annotations


def open(bucket_or_path):  # (shadows the builtin here only: warehouse.catalogue.open)
    """Open the newest catalogue of a warehouse: DuckDB relations of its tables.

    ``warehouse.catalogue.open("s3://my-warehouse").images.filter("Modality = 'CT'").df()``;
    see `warehouse.catalogue.views.open_catalogue`.
    """
    from warehouse.catalogue.views import open_catalogue

    return open_catalogue(bucket_or_path)
