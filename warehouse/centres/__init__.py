"""The submittingcentres graph's rules: reading the centres of the raw clinical files."""
