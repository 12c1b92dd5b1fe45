"""Datasets: specs, fetching, splits, few-shot sampling, image loading."""
