"""The documentation (README.md and docs/) against the code: its generated reference pages are
what the code generates, every TOML configuration it shows is one the loader accepts, its
queries run against a real export, and every file, module and make target it names exists."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pytest

import connector
from connector import config
from connector.emulator import EmulatorServer, build_world
from tests.doc_blocks import Block, blocks
from tests.helpers import ROOT, WORLD, write_config

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
README = ROOT / "README.md"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "update_readme", ROOT / "scripts" / "update_readme.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_blocks(language: str) -> list[Block]:
    return [b for page in [README, *PAGES] for b in blocks(page) if b.language == language]


class TestGeneratedPages:
    def test_generated_pages_are_current(self) -> None:
        """docs/reference/{configuration,columns,cli,log-events}.md and configs/example.toml
        are what connector/config.py, schema.py, cli.py and logs.py generate (`make readme`
        regenerates them)."""
        generator = load_generator()
        assert [] == generator.stale(ROOT)

    def test_check_names_a_stale_page(self, tmp_path: Path) -> None:
        """`update_readme.py --check` (run by `make docs`) exits 1 naming a page that is not
        what the code generates, and 0 once every page is."""
        generator = load_generator()
        for path in generator.pages():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / path, tmp_path / path)
        script = [sys.executable, str(ROOT / "scripts" / "update_readme.py")]
        fresh = subprocess.run([*script, "--check", "--root", str(tmp_path)], capture_output=True)
        assert 0 == fresh.returncode, fresh.stderr
        columns = tmp_path / "docs" / "reference" / "columns.md"
        columns.write_text(columns.read_text().replace("| `_run_id` |", "| `_run` |"))
        stale = subprocess.run(
            [*script, "--check", "--root", str(tmp_path)], capture_output=True, text=True
        )
        assert 1 == stale.returncode
        assert "docs/reference/columns.md" in stale.stderr
        assert "cli.md" not in stale.stderr

    def test_every_key_has_a_row(self) -> None:
        """Each configuration key has a row in the configuration reference."""
        page = (DOCS / "reference" / "configuration.md").read_text()
        for section, keys in config.KEYS.items():
            for key in keys:
                assert f"| `{section}.{key}` |" in page, f"{section}.{key}"

    def test_types_survive_markdown(self) -> None:
        """A type such as map<string, string> is escaped, so Markdown does not take it for an
        HTML tag and drop it from the rendered page."""
        page = (DOCS / "reference" / "columns.md").read_text()
        assert "| map&lt;string, string&gt; |" in page
        assert "map<string" not in page


TOML_BLOCKS = all_blocks("toml")


def test_pages_show_configurations() -> None:
    """The configuration test below has snippets to check (a change to the fence syntax would
    otherwise leave it checking nothing)."""
    assert len([b for b in TOML_BLOCKS if not b.marked_partial]) >= 10


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.where for b in TOML_BLOCKS])
def test_toml_snippet_is_a_valid_configuration(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ```toml block of the docs is a configuration connector.config.load accepts, unless
    marked partial. Files it names under ~ exist in a scratch home, as on a real machine."""
    if block.marked_partial:
        pytest.skip("marked as a partial configuration")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for value in strings(tomllib.loads(block.text)):
        if value.startswith("~/"):
            named = tmp_path / "home" / value[2:]
            named.parent.mkdir(parents=True, exist_ok=True)
            named.touch()
    path = tmp_path / "snippet.toml"
    path.write_text(block.text)
    config.load(path)


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


QUERYING = DOCS / "guides" / "querying.md"


def querying_blocks() -> list[Block]:
    """The querying guide's SQL and Python, up to its worked questions (which are the output of
    scripts/worked_questions.py, tested by tests/test_worked_questions.py)."""
    text = QUERYING.read_text()
    end = text.count("\n", 0, text.index("## Three questions")) + 1
    return [b for b in blocks(QUERYING) if b.language in ("sql", "python") and b.line < end]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose `out/` holds one export of the emulator for 2026-11-27 (the guide's date), as the guide's
    queries expect (`out` is output.uri's default)."""
    folder = tmp_path_factory.mktemp("querying")
    with EmulatorServer(build_world(**WORLD), oci_config_dir=folder / "oci") as server:  # type: ignore[arg-type]
        path = write_config(
            folder, server, output={"uri": str(folder / "out")}, fetch={"workers": 0}
        )
        outcome = connector.run(connector.load_config(path))
    assert outcome.published
    return folder


def test_querying_guide_has_queries() -> None:
    """The query test below runs something: DuckDB, pyarrow and the manifest reader at least."""
    assert len(querying_blocks()) >= 5


@pytest.mark.parametrize("block", querying_blocks(), ids=[b.where for b in querying_blocks()])
def test_querying_guide_runs(
    block: Block,
    exported: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each query of the guide runs against a real export and finds rows: its column names,
    paths and filters are the ones the connector writes."""
    monkeypatch.chdir(exported)
    if block.language == "sql":
        result = duckdb.sql(block.text)
        assert result is not None
        assert result.fetchall()
        return
    if "spark." in block.text:
        pytest.skip("needs a Spark session")
    if "import polars" in block.text:
        pytest.importorskip("polars")
    scope: dict[str, Any] = {}
    exec(block.text, scope)
    table = scope.get("table")
    assert table is None or table.num_rows > 0


CITED_PATH = re.compile(
    r"`((?:connector|tests|scripts|configs|benchmarks|docs)/[\w./-]+"
    r"|[\w.-]+\.(?:toml|lock|md|in|yml|yaml)|Makefile|LICENSE|\.ci/run)`"
)
CITED_MODULE = re.compile(r"`(connector(?:\.\w+)+)")
CITED_TARGET = re.compile(r"(?:`|^)make ([a-z][\w-]*)", re.M)
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def cited(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    found = set()
    for page in [README, *PAGES]:
        for match in pattern.finditer(page.read_text()):
            found.add((str(page.relative_to(ROOT)), match.group(1)))
    return sorted(found)


def test_cited_files_exist() -> None:
    """Every repository file or folder the README and the docs name in code (`configs/…`,
    `tests/test_x.py`, `pyproject.toml`) exists."""
    missing = [
        f"{page}: {name}"
        for page, name in cited(CITED_PATH)
        if not (ROOT / name.rstrip("/")).exists()
    ]
    assert [] == missing


def test_cited_modules_resolve() -> None:
    """Every `connector.x.y` the docs name is a module, or a name in one."""
    unresolved = [f"{page}: {name}" for page, name in cited(CITED_MODULE) if not resolves(name)]
    assert [] == unresolved


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    module, depth = parts[0], 1
    while depth < len(parts):  # the longest prefix that is a module
        try:
            found = importlib.util.find_spec(f"{module}.{parts[depth]}")
        except ModuleNotFoundError:  # the prefix is a module, not a package
            found = None
        if found is None:
            break
        module, depth = f"{module}.{parts[depth]}", depth + 1
    names = parts[depth:]
    if module.startswith("connector.airflow"):
        # Airflow is installed only in .venv-airflow: look for the name in the source.
        spec = importlib.util.find_spec(module)
        source = Path(spec.origin or "").read_text() if spec else ""
        return not names or bool(re.search(rf"^(?:def|class) {names[0]}\b", source, re.M))
    thing: object = importlib.import_module(module)
    for name in names:
        if not hasattr(thing, name):
            return False
        thing = getattr(thing, name)
    return True


def test_cited_make_targets_exist() -> None:
    """Every `make TARGET` the README and the docs mention is a target of the Makefile."""
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    unknown = [f"{page}: make {t}" for page, t in cited(CITED_TARGET) if t not in targets]
    assert [] == unknown


def test_readme_links_resolve() -> None:
    """The README's relative links point at files of the repository (mkdocs --strict checks
    the docs' own links; GitHub shows the README, where nothing checks them)."""
    links = [m.group(1) for m in MARKDOWN_LINK.finditer(README.read_text())]
    assert links
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert [] == missing


def test_readme_is_the_short_way_in() -> None:
    """The README keeps the two set-up commands and stays short: the rest is in docs/."""
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text
    assert len(text.splitlines()) <= 200
