"""Render a results folder's leaderboard page and screenshot it in headless Debian chromium
(Playwright drives the system browser; nothing is downloaded).

    python benchmarks/report/screenshot.py RESULTS OUT.png|OUT.jpg [report options ...]

Writes OUT.html next to OUT.png, prints the browser's console messages (there should be none).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> None:
    results, out, extra = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    page = out.with_suffix(".html")
    html = subprocess.run([sys.executable, "-m", "cpbench", "report", "--results", str(results), "--format", "html",
                           *extra], check=True, capture_output=True, text=True).stdout
    page.write_text(html, encoding="utf-8")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        messages = []
        tab.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        tab.on("pageerror", lambda e: messages.append(f"page error: {e}"))
        tab.goto(page.resolve().as_uri())
        tab.screenshot(path=str(out), full_page=True, **({"type": "jpeg", "quality": 80}
                                                          if out.suffix in (".jpg", ".jpeg") else {}))
        browser.close()
    print(f"wrote {page} ({page.stat().st_size} bytes) and {out}; console: {messages or 'nothing'}")


if __name__ == "__main__":
    main()
