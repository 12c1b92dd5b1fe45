"""Results: the row contract, an append-only Parquet store, and reports."""
