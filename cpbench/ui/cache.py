"""``cpbench cache``: what the derived-file cache holds (size and entries per kind), its size cap,
and clearing it. The cache is ``cpbench.paths.cache_root()``; everything in it can be made again."""

from __future__ import annotations

from rich.table import Table

from cpbench.engine import cache as store
from cpbench.errors import UserError
from cpbench.paths import cache_root

WHAT = {"features": "frozen features of test views (exact; every unprompted method)",
        "views": "frozen features of keyed training views, per training set and epoch (exact)"}


def cache_command(action: str | None, kind: str, max_size: str | None, out) -> None:
    root = cache_root()
    if action not in (None, "show", "clear"):
        raise UserError(f"unknown cache action {action!r}; use `cpbench cache` (show) or `cpbench cache clear`")
    kinds = store.KINDS if kind == "all" else (kind,)
    if kind != "all" and kind not in store.KINDS:
        raise UserError(f"--kind {kind!r} is not a cache kind; use {', '.join(store.KINDS)} or all")
    if max_size is not None:
        if max_size.lower() not in ("none", "off", "0"):
            store.parse_size(max_size, "--max-size")   # refuses before writing anything
        store.save_limit(root, max_size)
        removed, freed = store.prune(root, store.limit_bytes(root))
        out.print(f"cache cap: {max_size}" + (f"; removed {removed} least recently used file(s), {store.human(freed)}"
                                               if removed else ""))
    if action == "clear":
        removed, freed = store.clear(root, kinds)
        out.print(f"cleared {', '.join(kinds)} in {root}: {removed} file(s), {store.human(freed)}")
        return
    usage = store.usage(root)
    cap = store.limit_bytes(root)
    t = Table(title=f"cpbench cache: {root} (cap: {store.human(cap) if cap else 'none'})")
    for col in ("kind", "size", "entries", "files", "what"):
        t.add_column(col)
    for k in store.KINDS:
        u = usage[k]
        t.add_row(k, store.human(u["bytes"]), str(u["entries"]), str(u["files"]), WHAT[k])
    out.print(t)
