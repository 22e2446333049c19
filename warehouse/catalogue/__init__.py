"""The image catalogue: one row per filed image (`rows`), the parts a loader run writes and the
duplicate rule (`run`), the parts merged into one table (`merge`), and selections of it
(`selection`)."""
