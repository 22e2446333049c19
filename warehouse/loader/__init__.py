"""The warehouseloader graph's rules: the plan of a run, the per-file decisions, the memo of
unfiled inputs and the feedback to the sites."""
