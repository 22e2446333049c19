"""Listing the bucket: the raw side a run must look at (`raw`), and the index of what the
warehouse side holds (`warehouse`)."""
