"""The protocol registry (cpbench/protocols/registry.py): a plain table that imports nothing heavy,
every line's module has the face the registry promises, no protocol imports another, and adding a
protocol is one file plus one line: the README's example, run through the CLI."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from cpbench.protocols import registry
from cpbench.results import report
from cpbench.results.store import ResultStore

REPO = Path(__file__).resolve().parents[1]


def test_the_registry_imports_nothing_heavy():
    code = ("import sys, json, cpbench.protocols.registry as r; r.check_protocol_name('base2new'); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('cpbench', 'torch')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert json.loads(out) == ["cpbench", "cpbench.errors", "cpbench.protocols", "cpbench.protocols.registry"]


def test_every_protocol_module_has_the_face_its_line_promises():
    for name, line in registry.PROTOCOLS.items():
        module = registry.module(name)
        assert callable(module.plan_jobs) and callable(module.default_targets), name
        assert hasattr(module, "run") == line.own_runner, f"{name}: own_runner says {line.own_runner}"


def test_no_protocol_imports_another():
    modules = {line.module for line in registry.PROTOCOLS.values()}
    for line in registry.PROTOCOLS.values():
        path = REPO / (line.module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            assert not (set(names) & (modules - {line.module})), f"{line.module} imports {set(names) & modules}"


def _readme_example() -> tuple[str, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Writing a protocol"):text.index("## Layout")]
    module, line = re.findall(r"```python\n(.*?)```", section, re.S)
    return module, line


def test_the_readme_protocol_example_is_one_file_and_one_line(tmp_path, monkeypatch, cli_here):
    from minidata import make_caltech

    module, line = _readme_example()
    (tmp_path / "base_only_example.py").write_text(module, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = eval("{" + line.strip().splitlines()[-1] + "}", {"Protocol": registry.Protocol})  # noqa: S307
    monkeypatch.setitem(registry.PROTOCOLS, "base_only",
                        dataclasses.replace(entry["base_only"], module="base_only_example"))
    make_caltech(tmp_path / "data")
    code, out, err = cli_here("run", "zeroshot", "--protocol", "base_only", "--backbone", "tiny", "--pretrained",
                              "none", "--shots", "2", "--seeds", "1", "--dataset", "caltech101", "--device", "cpu",
                              "--root", str(tmp_path / "data"), "--results", str(tmp_path / "res"))
    assert code == 0, err
    rows = ResultStore(tmp_path / "res").read().frame
    assert list(rows["protocol"]) == ["base_only"] and list(rows["subset"]) == ["base"]
    assert list(rows["n_classes"]) == [2] and json.loads(rows["defaults_json"][0])["method"] == "zeroshot"
    rep = report.build(rows)      # no table layout for it: said, not dropped silently
    assert not rep.tables and any(n.startswith("base_only: 1 row(s) not shown") for n in rep.notes), rep.notes


def test_rows_of_a_protocol_without_a_table_layout_are_said_not_shown():
    from reporting import b2n

    rows = b2n("coop", "dtd", [70.0], [50.0])
    rows += [{**r, "protocol": "base_only"} for r in b2n("coop", "dtd", [71.0], [51.0])]
    rep = report.build(pd.DataFrame(rows))
    assert {t.protocol for t in rep.tables} == {"base2new"}
    assert any(n.startswith("base_only: 2 row(s) not shown") for n in rep.notes), rep.notes
