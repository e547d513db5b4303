"""Datasets: the prepared-dataset format (``shards``), the training DataModule and the recipes that build datasets."""
