"""The leaderboard page (``cpbench report --format html``, issue 20).

- Self-contained: no address outside the file (no http(s) source or link, no CDN), figures as
  data URIs, the training curves embedded when histories exist.
- In a real headless browser (Debian's chromium driven by Playwright): the page loads without
  console errors, every table holds the cell texts of the markdown report, clicking a header sorts
  the rows (Average rows stay last) and the method filter hides an entry. Skips, saying why, where
  chromium or Playwright is missing (CI installs both: .ci/run, the test extra).
"""

from __future__ import annotations

import re
import shutil

import pytest

from reporting import run_cli, toy_like

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def pages(tmp_path, monkeypatch, capsys):
    """(html page, markdown report) of toy-shaped results with --ci, and the results folder (with
    two training histories)."""
    from cpbench.results.curves import write_history

    root = toy_like(tmp_path / "res")
    hist = [{"epoch": e, "epochs": 3, "lr": 0.002 / e, "loss": 2.0 / e, "loss_ce": 2.0 / e, "train_acc": 40.0 + 10 * e,
             "seconds": 0.5} for e in (1, 2, 3)]
    for seed in (1, 2):
        ident = {"method": "coop", "train_dataset": "toy_shapes", "train_subset": "base", "shots": 16, "seed": seed,
                 "backbone": "toy", "pretrained": "openai", "config_hash": "h", "weights": ""}
        write_history(root / "checkpoints" / f"coop-toy_shapes-s{seed}", hist, ident)
    out = {}
    for fmt in ("html", "markdown"):
        code, text, err = run_cli(monkeypatch, capsys, "report", "--results", root, "--ci", "--format", fmt)
        assert code == 0, err
        out[fmt] = text
    return out["html"], out["markdown"], root


def test_page_is_self_contained(pages):
    page, _, _ = pages
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "<script src" not in page
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) >= 2 and all(i.startswith("data:image/png;base64,") for i in imgs)
    assert "Training curves: toy_shapes-base-k16-toy" in page  # the histories, embedded
    assert 'id="filters"' in page and 'class="method" value="kgcoop"' in page


def _markdown_tables(md: str) -> list[list[list[str]]]:
    tables, cur, body = [], None, False
    for line in md.splitlines():
        if line.startswith("## "):
            cur, body = [], False
            tables.append(cur)
        elif line.startswith("|---"):
            body = True
        elif line.startswith("| ") and body:
            cur.append([c.strip().strip("*") for c in line.strip().strip("|").split(" | ")])
    return tables


def test_page_in_a_headless_browser(pages, tmp_path):
    if chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                   "(pip install -e '.[test]'; the browser itself comes from apt, never playwright install)")
    page_html, md, _ = pages
    path = tmp_path / "leaderboard.html"
    path.write_text(page_html, encoding="utf-8")
    problems = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in
                    ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: problems.append(f"request {r.url}") if not r.url.startswith(("file:", "data:"))
                    else None)
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            # every table holds the markdown report's cell texts
            shown = page.eval_on_selector_all("table.lb", """ts => ts.map(t => Array.from(t.tBodies[0].rows).map(
                r => Array.from(r.cells).map(c => c.textContent.trim())))""")
            assert shown == _markdown_tables(md)
            # sorting by Base (with --ci the base-to-new table is one row per dataset and method)
            col = page.eval_on_selector("table.lb", """t => Array.from(t.tHead.rows[t.tHead.rows.length - 1].cells)
                .findIndex(c => c.textContent === 'Base')""")
            assert col == 2
            header = page.locator("table.lb").first.locator(f'th.sort[data-col="{col}"]')
            for direction in ("desc", "asc"):
                header.click()
                values = page.eval_on_selector("table.lb", f"""t => Array.from(t.tBodies[0].rows).map(r => [
                    r.classList.contains('avg'), parseFloat(r.cells[{col}].dataset.v)])""")
                body = [v for avg, v in values if not avg]
                assert body == sorted(body, reverse=direction == "desc") and len(body) == 4 * 3
                assert all(avg for avg, _ in values[-3:])  # the Average rows stay last
            # the method filter hides kgcoop's rows and keeps the others
            page.uncheck('input.method[value="kgcoop"]')
            rows = page.eval_on_selector("table.lb", """t => Array.from(t.tBodies[0].rows).map(r => [
                getComputedStyle(r).display === 'none', r.cells[1].textContent])""")
            assert {m for gone, m in rows if gone} == {"kgcoop"}
            assert {m for gone, m in rows if not gone} == {"zeroshot", "coop"}
            page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert (tmp_path / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
