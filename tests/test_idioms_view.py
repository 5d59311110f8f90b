"""How `nin idioms` shows the code: the four frameworks aligned by concept and by line (idioms/align.py),
on the page (idioms/page.py, checked in a real browser: headless Chromium, skipped with the reason where
none is installed) and in a wide terminal (idioms/terminal.py). The page needs Jinja2 and markdown-it-py
and the terminal view rich, the main environment's: the MXNet environment leaves these tests to it.
"""

import re
from pathlib import Path

import pytest

pytest.importorskip("jinja2", reason="the idioms page is built with Jinja2, in the main environment")

from idioms import align, browser, render
from idioms.source import Segment
from idioms.topics import PACKAGES, TOPICS

pytestmark = pytest.mark.main_env
ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "idioms.html"
BLOCK = next(t for t in TOPICS if t.key == "block")


def _seg(package: str, name: str, text: str, helper: bool = False) -> Segment:
    return Segment(package, f"{package}/model.py", name, "function", helper, 1, text.count("\n") + 1, text)


def test_lines_the_same_everywhere_are_one_row_and_the_runs_between_them_differ():
    texts = {"a": "def f(x):\n    y = x + 1\n    return y",
             "b": "def f(x):\n    y = x * 2\n    z = y\n    return y",
             "c": "def f(x):\n  w = x\n\n  return y"}  # indentation aside, "return y" is the same line
    got = [(c.same, c.lines) for c in align.chunks(texts)]
    assert got == [(True, {"a": (0, 1), "b": (0, 1), "c": (0, 1)}),
                   (False, {"a": (1, 2), "b": (1, 3), "c": (1, 3)}),
                   (True, {"a": (2, 3), "b": (3, 4), "c": (3, 4)})]
    assert [c.same for c in align.chunks({"a": "x = 1\ny = 2", "b": "x = 1\ny = 2"})] == [True]
    assert [(c.same, c.lines) for c in align.chunks({"a": "x = 1"})] == [(False, {"a": (0, 1)})]


def test_concepts_put_each_definition_beside_its_peers_and_the_helpers_last():
    columns = {"p": [_seg("p", "make", "def make(): pass"), _seg("p", "step", "def step(): pass"),
                     _seg("p", "_h", "def _h(): pass", helper=True)],
               "q": [_seg("q", "make", "def make(): return 1")]}
    rows = align.concepts(columns)
    assert [r.key for r in rows] == ["make", "step", align.HELPERS]
    assert [len(r.cells["q"]) for r in rows] == [1, 0, 0] and rows[2].chunks == ()
    assert [c.same for c in rows[0].chunks] == [False]  # "def make(): pass" is not "def make(): return 1"


def test_the_page_marks_what_differs_in_the_real_block():
    """In nin_block, the lines every framework shares (`for c in mlp:`) are one unmarked row in all four
    columns; Gluon's `blk = nn.HybridSequential()` is in a marked row, beside the others' own lines."""
    from idioms import page  # Jinja2: imported here, so that the MXNet environment can collect this file

    (topic, columns), = render.collect((BLOCK,))
    cells = page.grid(columns)
    shared = [c for c in cells if '<span class="ow">in</span> <span class="n">mlp</span>' in c.html]
    assert sorted(c.package for c in shared) == sorted(PACKAGES) and {c.kind for c in shared} == {"same"}
    assert len({c.row for c in shared}) == 1
    own = next(c for c in cells if 'HybridSequential</span><span class="p">(<wbr>)' in c.html)
    peers = [c for c in cells if c.row == own.row]
    assert own.kind == "diff" and sorted(c.package for c in peers) == sorted(PACKAGES)
    assert {c.kind for c in peers} <= {"diff", "gap"}


def test_notes_markdown_is_rendered_and_raw_html_is_shown_as_text():
    from idioms import page

    assert page.inline("use `x<1>` not <b>y</b>") == "use <code>x&lt;1&gt;</code> not &lt;b&gt;y&lt;/b&gt;"


# --- the terminal --------------------------------------------------------------------------------
def test_a_wide_terminal_shows_the_frameworks_side_by_side_rows_aligned():
    out = render.to_text((BLOCK,), width=render.SIDE_BY_SIDE)
    assert "\x1b[" not in out and max(len(line) for line in out.splitlines()) <= render.SIDE_BY_SIDE
    head = next(line for line in out.splitlines() if "MXNet Gluon" in line)
    assert all(label in head for label in PACKAGES.values()), head
    assert any(line.count("def nin_block(") == 4 for line in out.splitlines()), "the first rows are not aligned"
    assert any(line.startswith(" ≠ ") for line in out.splitlines()), "no run of differing lines is marked"
    assert "\x1b[" in render.to_text((BLOCK,), width=render.SIDE_BY_SIDE, color=True)


def test_a_narrower_terminal_shows_them_one_after_another():
    out = render.to_text((BLOCK,), width=render.SIDE_BY_SIDE - 1)
    heads = [out.index(f"-- {label}: {package}/model.py nin_block ") for package, label in PACKAGES.items()]
    assert heads == sorted(heads) and not any(line.count("def nin_block(") > 1 for line in out.splitlines())


# --- in a real browser ----------------------------------------------------------------------------
CHROMIUM = browser.find()
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason=browser.missing())


def _rows(topic: dict) -> dict[int, list[dict]]:
    rows: dict[int, list[dict]] = {}
    for cell in topic["cells"]:
        rows.setdefault(cell["row"], []).append(cell)
    return rows


def _misaligned(m: dict) -> list[str]:
    """Rows (and concepts) whose four cells do not start at one height, or do not stand left to right."""
    out = []
    for t in m["topics"]:
        for row, cells in _rows(t).items():
            tops = {round(c["top"], 1) for c in cells}
            lefts = [c["left"] for c in cells]
            if len(cells) != 4 or len(tops) != 1 or lefts != sorted(lefts):
                out.append(f"{t['id']} row {row}: tops {sorted(tops)}, lefts {lefts}")
    return out


@needs_browser
def test_page_at_1400_pixels_has_four_columns_with_their_rows_aligned():
    """Every topic shows four non-empty code columns side by side; the top of each concept and of each run
    of lines is at the same height in every column; no text leaves its cell."""
    m = browser.measure(CHROMIUM, PAGE.read_text(encoding="utf-8"), width=browser.WIDE)
    assert m["innerWidth"] == browser.WIDE and m["pageScrollWidth"] <= m["innerWidth"], "the page scrolls sideways"
    assert [t["id"] for t in m["topics"]] == [t.key for t in TOPICS]
    assert not _misaligned(m), _misaligned(m)[:5]
    for t in m["topics"]:
        first = [c for c in t["cells"] if c["kind"] == "head"]
        assert [c["package"] for c in first] == list(PACKAGES) and first[0]["right"] <= first[1]["left"], t["id"]
        for package in PACKAGES:
            assert sum(c["codeChars"] for c in t["cells"] if c["package"] == package) > 0, f"{t['id']}: {package} empty"
        concepts = {c["concept"] for c in t["cells"] if c["concept"]}
        for concept in concepts:
            tops = {round(c["top"], 1) for c in t["cells"] if c["concept"] == concept}
            assert len(tops) == 1, f"{t['id']}: {concept} starts at {sorted(tops)}"
        for c in t["cells"]:
            assert c["problemCount"] == 0, f"{t['id']} / {c['package']} row {c['row']}: {c['problems']}"
    kinds = {c["kind"] for t in m["topics"] for c in t["cells"]}
    assert {"same", "diff", "gap"} <= kinds, kinds


@needs_browser
def test_the_alignment_check_sees_rows_out_of_line():
    """The same page with the cells left to flow in their written order: the measurement must see it."""
    unplaced = PAGE.read_text(encoding="utf-8").replace('style="grid-row:', 'style="--row:')
    assert _misaligned(browser.measure(CHROMIUM, unplaced, width=browser.WIDE))


@needs_browser
@pytest.mark.parametrize("width", [browser.NARROW, 600])
def test_page_stacks_the_frameworks_on_a_narrow_screen(width):
    m = browser.measure(CHROMIUM, PAGE.read_text(encoding="utf-8"), width=width)
    assert m["pageScrollWidth"] <= m["innerWidth"]
    for t in m["topics"]:
        shown = [c for c in t["cells"] if c["shown"]]
        assert {c["kind"] for c in t["cells"] if not c["shown"]} <= {"gap"}, t["id"]
        assert len({round(c["left"]) for c in shown}) == 1, f"{t['id']}: not stacked at {width} px"
        spans = [(min(c["top"] for c in shown if c["package"] == p), max(c["bottom"] for c in shown if c["package"] == p))
                 for p in PACKAGES]
        assert all(spans[k][1] <= spans[k + 1][0] + 0.5 for k in range(3)), f"{t['id']}: {spans}"
        assert all(c["problemCount"] == 0 for c in shown), t["id"]


@needs_browser
def test_the_overflow_check_can_fail():
    page_text = PAGE.read_text(encoding="utf-8")
    unwrapped = page_text.replace("white-space: pre-wrap;", "white-space: pre;")
    assert unwrapped != page_text
    m = browser.measure(CHROMIUM, unwrapped, width=browser.WIDE)
    assert sum(c["problemCount"] for t in m["topics"] for c in t["cells"]) > 0


def test_the_committed_screenshots_are_pngs_of_their_widths():
    for name, width in (("idioms.png", browser.WIDE), ("idioms-800.png", browser.NARROW)):
        data = (ROOT / "docs" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert int.from_bytes(data[16:20], "big") == width, f"docs/{name} is not {width} pixels wide"
    assert re.search(r"!\[[^]]*\]\(idioms-800\.png\)", (ROOT / "docs" / "idioms.md").read_text())
