"""Append-only Parquet shards, one per job (a job = one training + its evaluations).

A shard is written to a hidden temp file and renamed into place, so readers never see a
half-written one and parallel runs never collide (each job has its own file name). Reading
concatenates the shards; a corrupt shard is named and skipped, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cpbench import atomic
from cpbench.results.schema import SCHEMA


@dataclass
class ReadResult:
    frame: pd.DataFrame
    corrupt: list[Path] = field(default_factory=list)


class ResultStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.shards = self.root / "shards"

    def shard_path(self, job_key: str) -> Path:
        return self.shards / f"{job_key}.parquet"

    def has(self, job_key: str) -> bool:
        return self.shard_path(job_key).exists()

    def write(self, job_key: str, rows: list[dict]) -> Path:
        table = pa.Table.from_pylist([{k: r.get(k) for k in SCHEMA.names} for r in rows], schema=SCHEMA)
        path = self.shard_path(job_key)
        with atomic.atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    def read(self) -> ReadResult:
        frames, corrupt = [], []
        for path in sorted(self.shards.glob("*.parquet")) if self.shards.exists() else []:
            try:
                frames.append(pq.read_table(path).to_pandas())
            except Exception:
                corrupt.append(path)
        if not frames:
            return ReadResult(pd.DataFrame(columns=SCHEMA.names), corrupt)
        df = pd.concat(frames, ignore_index=True)
        return ReadResult(df, corrupt)
