"""Shards: which Triton server takes a batch (least work or round robin), health and the retry budget."""
