"""A real browser for the page: headless Chromium measures the layout and takes the screenshot.

Chromium comes from the distribution (`apt-get install -y chromium` on Debian and Ubuntu); NIN_CHROMIUM
may name another Chrome or Chromium binary. Each run gets a fresh profile in a temporary folder and
no network: the page is self-contained, and nothing else is wanted.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from common.fsio import atomic_write_bytes, atomic_write_text

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
HOW_TO_INSTALL = "install it with `apt-get install -y chromium`, or name a Chrome binary in NIN_CHROMIUM"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1", "--mute-audio")
RESULT_ID = "nin-layout-result"
WIDE, NARROW = 1400, 800  # the screenshots' widths: the frameworks side by side, and one after another


class BrowserError(RuntimeError):
    """Chromium did not do what was asked; the message says what it printed."""


def find() -> str | None:
    """The Chromium binary: $NIN_CHROMIUM, else the first of CANDIDATES on the PATH."""
    named = os.environ.get("NIN_CHROMIUM")
    if named:
        return named if Path(named).is_file() and os.access(named, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def missing() -> str:
    """Why find() found nothing, in one line."""
    named = os.environ.get("NIN_CHROMIUM")
    if named:
        return f"NIN_CHROMIUM={named} is not an executable file"
    return f"no Chromium on this machine ({HOW_TO_INSTALL})"


def run(chromium: str, args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="nin-chromium-") as profile:
        try:
            return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"{chromium} did not finish in {timeout:g} s") from None


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def screenshot(chromium: str, page: Path, png: Path, *, width: int = WIDE, height: int = 1800) -> Path:
    """The top of the page at `width` x `height` pixels, as PNG (written atomically)."""
    with tempfile.TemporaryDirectory(prefix="nin-idioms-") as folder:
        shot = Path(folder) / "page.png"  # Chromium picks the format by the name's extension
        r = run(chromium, [f"--screenshot={shot}", f"--window-size={width},{height}", Path(page).resolve().as_uri()])
        if r.returncode != 0 or not shot.exists() or shot.stat().st_size == 0:
            raise BrowserError(f"no screenshot (exit {r.returncode}): {_last_line(r.stderr)}")
        return atomic_write_bytes(png, shot.read_bytes())


# Runs inside the page: for every topic, each cell of its code grid (idioms/page.py: a column per framework,
# rows aligned by concept and line), where it sits, how much code it shows, and any text that sticks out of
# its cell or any element whose content is wider than its box.
MEASURE = r"""
(function () {
  function describe(el) {
    return el.tagName.toLowerCase() + (el.className && typeof el.className === "string" ? "." + el.className : "");
  }
  function problemsOf(cell, box) {
    const problems = [];
    for (const el of [cell, ...cell.querySelectorAll("*")]) {
      if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth) {
        problems.push(describe(el) + " content " + el.scrollWidth + " px wide in a box of " + el.clientWidth);
      }
    }
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    const range = document.createRange();
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.textContent.trim()) continue;
      range.selectNodeContents(node);
      for (const r of range.getClientRects()) {
        if (r.width > 0 && (r.right > box.right + 0.5 || r.left < box.left - 0.5)) {
          problems.push("text " + JSON.stringify(node.textContent.slice(0, 40)) + " spans " +
                        Math.round(r.left) + ".." + Math.round(r.right) + " px, its cell " +
                        Math.round(box.left) + ".." + Math.round(box.right));
          break;
        }
      }
    }
    return problems;
  }
  const result = {innerWidth: window.innerWidth, pageScrollWidth: document.documentElement.scrollWidth, topics: []};
  for (const section of document.querySelectorAll("section.topic")) {
    const grid = section.querySelector(".code-grid");
    if (!grid) continue;
    const topic = {id: section.id, cells: []};
    for (const cell of grid.querySelectorAll(":scope > .cell")) {
      const box = cell.getBoundingClientRect();
      const problems = problemsOf(cell, box);
      const code = [...cell.querySelectorAll(".hl pre")].map(p => p.textContent.trim().length);
      topic.cells.push({package: cell.dataset.package, row: Number(cell.dataset.row),
                        concept: cell.dataset.concept || "",
                        kind: [...cell.classList].filter(c => c !== "cell").join(" "),
                        shown: getComputedStyle(cell).display !== "none", left: box.left, right: box.right,
                        top: box.top, bottom: box.bottom, codeChars: code.reduce((a, b) => a + b, 0),
                        problems: problems.slice(0, 5), problemCount: problems.length});
    }
    result.topics.push(topic);
  }
  const out = document.createElement("pre");
  out.id = "@RESULT_ID@";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
})();
""".replace("@RESULT_ID@", RESULT_ID)


def measure(chromium: str, page_html: str, *, width: int, height: int = 1000, timeout: float = 120) -> dict:
    """Open the page at `width` pixels in headless Chromium and measure it (see MEASURE)."""
    with tempfile.TemporaryDirectory(prefix="nin-idioms-") as folder:
        path = Path(folder) / "page.html"
        atomic_write_text(path, page_html.replace("</body>", f"<script>{MEASURE}</script>\n</body>"))
        r = run(chromium, ["--dump-dom", f"--window-size={width},{height}", path.as_uri()], timeout=timeout)
    m = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', r.stdout, re.S)
    if r.returncode != 0 or not m:
        raise BrowserError(f"no measurement (exit {r.returncode}): {_last_line(r.stderr)}")
    return json.loads(html.unescape(m.group(1)))
