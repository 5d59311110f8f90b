"""`nin idioms`: the four frameworks side by side, cut from the live source (issue 14).

The topic table (idioms/topics.py) cites backend definitions, tests, matrix checks and planted bugs;
these tests fail when one of them is gone, when a cited planted bug is not caught by the note's checks
in the committed results (results/mutations/*.json, read here on their own, judged by tests/mutations.py),
when what the page says about records/matrix.json or the planted bugs is not computed from those files,
when the committed docs/idioms.html is older than the code or the results it shows, and when the page
does not lay out in a real browser (headless Chromium: skipped, with the reason, where none is
installed): the four columns side by side with their rows aligned at 1400 pixels, one after another at
800 and 600. Nothing here imports a framework; the page needs Jinja2 and markdown-it-py and the wide
terminal view rich, which are the main environment's (requirements/main.txt), so the MXNet environment
leaves these tests to it (main_env).
"""

import ast
import json
import re
import shutil
from pathlib import Path

import mutations
import pytest

from common import backends

pytest.importorskip("jinja2", reason="the idioms page is built with Jinja2, in the main environment")

from idioms import facts, render, source
from idioms import page as html_page
from idioms.cli import check, first_difference
from idioms.topics import PACKAGES, PUBLIC, TOPICS, Cut, Note, Topic
from nin.cli import main as nin

pytestmark = pytest.mark.main_env  # Jinja2, markdown-it-py and rich: the main environment's, not MXNet's
ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "idioms.html"
REGENERATE = f"regenerate it: .venv/bin/{render.COMMAND}"


def test_every_cited_definition_test_and_check_exists():
    """Every cut finds its definitions, every cited test function exists (read with ast), every check is
    one of conformance.tolerances.CHECKS, and a note without evidence says what is not proven."""
    problems = source.verify(TOPICS)
    assert not problems, "\n".join(problems)


def test_the_topic_table_covers_every_backend_and_the_issue():
    assert set(PACKAGES) == {b.package for b in backends.BACKENDS.values()}
    assert [t.key for t in TOPICS] == ["block", "build", "weights", "dropout", "loss", "optimizer", "compile",
                                       "device", "loop", "distributed", "shapes"]
    for topic in TOPICS:
        assert list(topic.cuts) == list(PACKAGES), topic.key
        assert topic.notes, f"{topic.key}: no difference is called out"
        for note in topic.notes:
            assert note.text.endswith(".") and not re.search(r"\. [A-Z]", note.text), \
                f"{topic.key}: a note is one sentence: {note.text!r}"
            assert not any(b.startswith("tests/test_mutations.py") for b in note.evidence), \
                "planted bugs go in Note.planted_bugs"
            assert all(b in mutations.CATALOGUE for b in note.planted_bugs), \
                f"{topic.key}: Note.planted_bugs names mutants of tests/mutations.py: {note.planted_bugs}"


def test_committed_page_is_fresh():
    """docs/idioms.html is exactly what the source and the committed results give now."""
    assert PAGE.exists(), f"{PAGE.relative_to(ROOT)} is missing; {REGENERATE}"
    committed, fresh = PAGE.read_text(encoding="utf-8"), html_page.page(TOPICS)
    assert committed == fresh, f"docs/idioms.html is stale ({first_difference(committed, fresh)}); {REGENERATE}"


def test_render_is_deterministic_and_self_contained():
    page = html_page.page(TOPICS)
    assert page == html_page.page(TOPICS)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page fetches something"
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert str(ROOT) not in page, "an absolute path of this machine is in the page"
    for topic in TOPICS:
        assert f'id="{topic.key}"' in page
    assert page.count('<div class="cell head" data-package=') == 4 * len(TOPICS)


def _copy_tree(tmp_path: Path) -> Path:
    """The backend packages, the test files and the committed results, as another checkout would have them."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests").mkdir()
    for f in (ROOT / "tests").glob("*.py"):
        shutil.copy(f, tmp_path / "tests" / f.name)
    for rel in facts.input_files():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    return tmp_path


def test_a_renamed_function_fails_until_the_page_is_regenerated(tmp_path):
    """Rename nin_block in one backend: the cut fails, naming the file and the function; the page cannot be
    rendered until idioms/topics.py follows the rename, and then it differs from the one before."""
    root = _copy_tree(tmp_path)
    before = html_page.page(TOPICS, root=root)
    model = root / "nin_torch" / "model.py"
    model.write_text(model.read_text().replace("def nin_block(", "def make_block(").replace(
        "layers.append(nin_block(", "layers.append(make_block("))
    problems = source.verify(TOPICS, root=root)
    assert any("nin_torch/model.py" in p and "'nin_block'" in p for p in problems), problems
    with pytest.raises(source.IdiomsError, match="nin_torch/model.py.*'nin_block'"):
        html_page.page(TOPICS, root=root)
    block = next(t for t in TOPICS if t.key == "block")
    followed = Topic(block.key, block.title, block.summary,
                     {**block.cuts, "nin_torch": (Cut("model.py", ("make_block",)),)}, block.notes)
    topics = tuple(followed if t is block else t for t in TOPICS)
    after = html_page.page(topics, root=root)
    assert after != before and "make_block" in after


def test_a_changed_body_makes_the_page_stale(tmp_path):
    root = _copy_tree(tmp_path)
    before = html_page.page(TOPICS, root=root)
    train = root / "nin_jax" / "train.py"
    text = train.read_text()
    assert "optax.sgd(schedule," in text  # the line the page cuts, in the optimizer topic
    train.write_text(text.replace("optax.sgd(schedule,", "optax.sgd(lambda count: 2 * schedule(count),"))
    after = html_page.page(TOPICS, root=root)
    assert after != before
    assert "line" in first_difference(before, after)


def test_a_missing_test_or_check_is_named(tmp_path):
    root = _copy_tree(tmp_path)
    checks = source.check_names()
    note = Note("A difference.", evidence=("tests/test_backends.py::test_no_such_test", "tests/nowhere.py::test_x",
                                           "test_backends.py::test_weights_round_trip"),
                checks=("no_such_check",), matrix=("mode=compiled",))
    problems = "\n".join(source.note_problems(note, checks, root=root))
    assert "tests/test_backends.py has no test function 'test_no_such_test'" in problems
    assert "tests/nowhere.py: cannot read it" in problems
    assert "expected tests/<file>.py::<test function>" in problems
    assert "check 'no_such_check' is not a conformance check" in problems
    assert "matrix 'mode=compiled': expected <field>=<value>, field one of backend, compile" in problems
    assert "no evidence and no stated gap" in "\n".join(source.note_problems(Note("Unproven."), checks, root=root))
    assert not source.note_problems(Note("Unproven.", gap="nothing tests it yet"), checks, root=root)
    assert not source.note_problems(Note("Leans on records.", matrix=("device=gpu",)), checks, root=root)
    # a renamed test fails the citation too
    test_file = root / "tests" / "test_backends.py"
    test_file.write_text(test_file.read_text().replace("def test_dropout_acts_in_training_only(",
                                                       "def test_dropout_only_in_training("))
    assert any("test_dropout_acts_in_training_only" in p for p in source.verify(TOPICS, root=root))


def _results_entries() -> list[dict]:
    """Every entry of the committed planted-bug results, read here without idioms.facts."""
    return [e for f in sorted((ROOT / "results" / "mutations").glob("*.json"))
            for e in json.loads(f.read_text())["results"]]


def test_each_cited_planted_bug_fails_the_notes_checks_in_the_results():
    """For each note citing a planted bug and a check, every run of that mutant in results/mutations/*.json
    has that check failing, and tests/mutations.py's verdict counts the run caught (the unmutated backend
    passes the check in that precision, or fails it by far less); a note citing no check needs the
    mutant caught in every run."""
    entries = _results_entries()
    controls = {(e["backend"], e["precision"]): e for e in entries if e["mutant"] is None}
    cited = [(t.key, n, b) for t in TOPICS for n in t.notes for b in n.planted_bugs]
    assert cited, "no note cites a planted bug"
    for key, note, bug in cited:
        runs = [e for e in entries if e["mutant"] == bug]
        assert runs, f"{key}: planted bug {bug!r} has no run in results/mutations/*.json"
        for e in runs:
            where = f"{key}: {bug} on {e['backend']} in {e['precision']}"
            control = controls.get((e["backend"], e["precision"]))
            assert control is not None and "error" not in e, f"{where}: no control, or the mutant raised"
            assert mutations.verdict(e, control)[0], f"{where}: {mutations.verdict(e, control)[1]}"
            failed = {r["check"]: r["ratio"] for r in e["rows"] if not r["passed"]}
            base = {r["check"]: r["ratio"] for r in control["rows"] if not r["passed"]}
            for c in note.checks:
                assert c in failed, f"{where}: the note cites check {c}, which passes (failed: {sorted(failed)})"
                assert c not in base or failed[c] > mutations.OVER_CONTROL * base[c], \
                    f"{where}: {c} fails unmutated too ({base.get(c)}x), and the mutant is not far worse"


def test_facts_judge_planted_bugs_as_tests_mutations_does():
    """idioms.facts reads tests/mutations.py with ast (it imports nothing from tests/): the catalogue and
    the over-control rule it reads, and the runs it counts caught, are tests/mutations.py's own."""
    catalogue, over = facts.read_catalogue()
    assert over == mutations.OVER_CONTROL
    assert catalogue == {m.name: (m.what, m.caught_by) for m in mutations.CATALOGUE.values()}
    entries = _results_entries()
    controls = {(e["backend"], e["precision"]): e for e in entries if e["mutant"] is None}
    for e in entries:
        if e["mutant"] is not None:
            control = controls.get((e["backend"], e["precision"]))
            assert bool(facts.caught_checks(e, control, over)) == mutations.verdict(e, control)[0], e["mutant"]
    found = facts.read_mutations()
    assert found.runs == sum(1 for e in entries if e["mutant"] is not None)
    assert list(found.bugs) == list(mutations.CATALOGUE)


def test_a_planted_bug_its_checks_do_not_catch_is_refused(tmp_path):
    """Cite a check that passes for the mutant, or a mutant that is not in the catalogue or has no run:
    verify names the bug, the check and the run."""
    root = _copy_tree(tmp_path)
    checks, found = source.check_names(), facts.read_mutations(root=root)
    wrong = Note("Momentum.", checks=("logits",), planted_bugs=("torch-bn-momentum-inverted", "no-such-bug"))
    problems = "\n".join(source.note_problems(wrong, checks, found, root=root))
    assert "planted bug 'torch-bn-momentum-inverted': logits does not catch it on torch in fp32" in problems
    assert "planted bug 'no-such-bug': no such mutant in tests/mutations.py" in problems
    right = Note("Momentum.", checks=("running_statistics",), planted_bugs=("torch-bn-momentum-inverted",))
    assert not source.note_problems(right, checks, found, root=root)
    block = next(t for t in TOPICS if t.key == "block")
    with pytest.raises(source.IdiomsError, match="^topic block: planted bug 'torch-bn-momentum-inverted': logits "):
        html_page.page((Topic(block.key, block.title, block.summary, block.cuts, (wrong,)),), root=root)
    # the results lose every run of it: the citation is refused
    main = root / "results" / "mutations" / "main.json"
    doc = json.loads(main.read_text())
    doc["results"] = [e for e in doc["results"] if e["mutant"] != "torch-bn-momentum-inverted"]
    main.write_text(json.dumps(doc))
    assert source.note_problems(right, checks, facts.read_mutations(root=root), root=root) == [
        "planted bug 'torch-bn-momentum-inverted': no run of it in results/mutations/*.json"]
    # a note that cites no check needs the bug caught by some check: make every check pass for one
    for e in doc["results"]:
        for row in e.get("rows", []) if e["mutant"] == "jax-loss-sum" else []:
            row["passed"] = True
    main.write_text(json.dumps(doc))
    problems = source.note_problems(Note("Loss.", evidence=(), planted_bugs=("jax-loss-sum",)), checks,
                                    facts.read_mutations(root=root), root=root)
    assert problems and all("planted bug 'jax-loss-sum': no check catches it on jax in fp" in p for p in problems)


def test_a_cited_planted_bug_is_on_the_page_with_what_the_results_measured():
    page = html_page.page(TOPICS)
    assert "None cited yet." not in page
    found = facts.read_mutations()
    cited = {b for t in TOPICS for n in t.notes for b in n.planted_bugs}
    for bug in cited:
        link = re.search(r'<a class="ev bug" href="#([^"]+)">planted bug ' + re.escape(bug) + "</a>", page)
        assert link and f'<dt id="{link[1]}">{bug}</dt>' in page, bug
        entry = page[page.index(f'<dt id="{link[1]}">'):].split("</dd>")[0]
        runs = found.bugs[bug].runs
        assert f"caught in every run ({', '.join(f'{r.backend} {r.precision}' for r in runs)};" in entry, entry
        for name, (low, high) in found.bugs[bug].caught_everywhere().items():
            assert f"{name} ({render.ratio_range(low, high)})" in entry, (bug, name)
    assert f"{found.runs} runs of {sum(1 for b in found.bugs.values() if b.runs)} of the {len(found.bugs)}" in page


def test_what_the_page_says_of_the_matrix_is_computed_from_it(tmp_path):
    """Drop the compiled records from a copy of records/matrix.json: the compile note loses its proof and
    says the matrix holds none; the summary counts what is left."""
    root = _copy_tree(tmp_path)
    doc = json.loads((ROOT / facts.MATRIX).read_text())
    compiled = [r for r in facts.read_matrix().records if r.compile == "compiled"]
    assert compiled, "the committed matrix holds no compiled record: this test needs one"
    before = html_page.page(TOPICS, root=root)
    assert f"committed matrix: {len(compiled)} records with compile=compiled, every check passed" in before
    labels = {r.label for r in compiled}
    doc["checks"] = [c for c in doc["checks"] if c["backend"] not in labels and c["against"] not in labels]
    doc["compared"] = [c for c in doc["compared"] if c.split(":")[0] not in labels]
    (root / facts.MATRIX).write_text(json.dumps(doc))
    after = html_page.page(TOPICS, root=root)
    assert "records with compile=compiled" not in after
    assert "records/matrix.json holds no record with compile=compiled (it holds compile eager)." in after
    left = facts.read_matrix(root=root)
    assert f"judges {len(left.records)} records in {left.rows:,} check rows" in after
    assert len(left.records) + len(compiled) == len(facts.read_matrix().records)


def test_a_malformed_results_file_is_named_with_its_field(tmp_path):
    root = _copy_tree(tmp_path)
    (root / facts.MATRIX).write_text(json.dumps({"compared": [], "checks": [{"backend": "x"}]}))
    with pytest.raises(source.IdiomsError, match=r"^records/matrix.json: checks\[0\].passed: expected bool"):
        facts.read_matrix(root=root)
    (root / "results" / "mutations" / "bad.json").write_text('{"results": [{"backend": 1}]}')
    with pytest.raises(source.IdiomsError, match=r"^results/mutations/bad.json: results\[0\].backend: expected str"):
        facts.read_mutations(root=root)


def test_check_names_the_results_that_changed_since_the_page(tmp_path, capsys):
    """--check compares the hashes the page embeds with the committed results first: a changed, new or
    removed results file is named in one line, exit 1."""
    root = _copy_tree(tmp_path)
    out = tmp_path / "page.html"
    out.write_text(html_page.page(TOPICS, root=root))
    assert check(str(out), root=root) == 0
    assert render.embedded_inputs(out.read_text()) == facts.input_hashes(root=root)
    capsys.readouterr()
    matrix = root / facts.MATRIX
    matrix.write_text(matrix.read_text() + "\n")
    assert check(str(out), root=root) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is stale: records/matrix.json changed since it was generated" in err
    (root / "results" / "mutations" / "gpu.json").write_text('{"results": []}')
    (root / "results" / "mutations" / "mxnet.json").unlink()
    assert check(str(out), root=root) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results/mutations/gpu.json is new since" in err
    assert "results/mutations/mxnet.json was removed since" in err
    out.write_text(re.sub(r'<meta name="nin-idioms-input"[^>]*>\n', "", out.read_text()))
    assert check(str(out), root=root) == 1
    assert "names none of the results it was computed from" in capsys.readouterr().err


def test_cuts_bring_their_helpers_and_marked_regions(tmp_path):
    (tmp_path / "nin_x").mkdir()
    (tmp_path / "nin_x" / "model.py").write_text(
        'RATE = 0.5\n\n\ndef _helper(x):\n    return _inner(x) * RATE\n\n\ndef _inner(x):\n    return x\n\n\n'
        'def public(x):\n    return x\n\n\ndef step(x):\n    """One step."""\n    # idiom: scale\n'
        '    y = _helper(x)\n    # end idiom\n    return public(y)\n')
    segs = source.cut("nin_x", Cut("model.py", ("step",)), root=tmp_path)
    assert [(s.name, s.helper) for s in segs] == [("step", False), ("RATE", True), ("_helper", True),
                                                  ("_inner", True)]  # public functions are topics of their own
    assert segs[0].text.startswith("def step(x):") and segs[0].text.endswith("return public(y)")
    assert [s.name for s in source.cut("nin_x", Cut("model.py", ("step",), helpers=False), root=tmp_path)] == ["step"]
    region = source.cut("nin_x", Cut("model.py", ("region:scale",)), root=tmp_path)
    assert region[0].kind == "region" and region[0].text == "    y = _helper(x)"
    assert [s.name for s in region[1:]] == ["RATE", "_helper", "_inner"]
    assert [s.name for s in source.cut("nin_x", Cut("model.py", PUBLIC), root=tmp_path)] == \
        ["public", "step", "RATE", "_helper", "_inner"]
    with pytest.raises(source.IdiomsError, match="no region marked '# idiom: missing'"):
        source.cut("nin_x", Cut("model.py", ("region:missing",)), root=tmp_path)
    with pytest.raises(source.IdiomsError, match="nin_x/loop.py: cannot read it"):
        source.cut("nin_x", Cut("loop.py", PUBLIC), root=tmp_path)


def test_terminal_view_prints_the_four_snippets_with_the_notes(capsys):
    assert nin(["idioms", "--topic", "block", "--color", "never"]) == 0
    out = capsys.readouterr().out
    heads = [out.index(f"-- {label}: {package}/model.py nin_block ") for package, label in PACKAGES.items()]
    assert heads == sorted(heads), "the four snippets, one after another, in the page's order"
    assert out.index("Differences that matter:") < heads[0]
    assert out.count("def nin_block(") == 4 and "proven by: tests/test_mirror.py::test_every_registered_package_fulfils_the_contract" in out
    assert "\x1b[" not in out


def test_json_has_every_topic_with_four_columns(capsys):
    assert nin(["idioms", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [t["key"] for t in doc["topics"]] == [t.key for t in TOPICS]
    for t in doc["topics"]:
        assert list(t["columns"]) == list(PACKAGES)
        assert all(c["segments"] and all(s["source"].strip() for s in c["segments"]) for c in t["columns"].values())
    assert set(doc["checks"]) <= set(source.check_names())


def test_html_and_check(tmp_path, capsys):
    out = tmp_path / "sub" / "page.html"
    assert nin(["idioms", "--html", str(out)]) == 0
    assert nin(["idioms", "--check", str(out)]) == 0  # a fresh render, compared
    out.write_text(out.read_text().replace("The NiN block", "The block"))
    capsys.readouterr()
    assert nin(["idioms", "--check", str(out)]) == 1
    err = capsys.readouterr().err
    assert "is stale: line" in err and "nin idioms --html docs/idioms.html" in err
    assert not list(out.parent.glob("*.tmp")), "a temporary file was left behind"


@pytest.mark.parametrize("argv, message", [
    (["--topic", "nope"], "nin idioms: --topic: unknown topic 'nope'; expected one of block, build"),
    (["--html", "{file}/page.html"], "nin: --html {file}/page.html: {file} is a file, not a folder"),
    (["--screenshot", "x.png"], "nin idioms: --screenshot: needs --html FILE"),
    (["--narrow-screenshot", "x.png"], "nin idioms: --narrow-screenshot: needs --html FILE"),
    (["--check", "{tmp}/missing.html"], "nin idioms: --check: cannot read {tmp}/missing.html"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    fill = {"file": str(tmp_path / "afile"), "tmp": str(tmp_path)}
    assert nin(["idioms", *[a.format(**fill) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(**fill)) and err.count("\n") == 1 and "Traceback" not in err


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        nin(["idioms", "--help"])
    assert e.value.code == 0 and "--topic" in capsys.readouterr().out


def test_idioms_imports_no_framework():
    """idioms/ reads the backends as text: it runs in every environment."""
    frameworks = {"torch", "tensorflow", "keras", "jax", "flax", "optax", "mxnet"}
    for path in (ROOT / "idioms").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not {n.split(".")[0] for n in names} & frameworks, f"{path.name} imports {names}"


