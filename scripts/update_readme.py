"""Regenerate what is generated from the code (`make readme`): the reference pages of the
documentation site (docs/reference/configuration.md from connector/config.py, columns.md from
connector/schema.py, cli.md from the command's argument parser, log-events.md from
connector/logs.py) and configs/example.toml.

`--check` writes nothing and exits 1 naming the files that are not what the code generates
(`make docs` runs it, and tests/test_docs.py checks the same), so a key, column or option
added without regenerating fails the build instead of leaving the documentation behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from connector import cli, config, logs, schema

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path("docs") / "reference"
EXAMPLE = Path("configs") / "example.toml"
HELP_WIDTH = 100
"""Help text is wrapped at a fixed width, not the terminal's, so every machine generates the
same page."""


def generated_notice(source: str) -> str:
    return (
        f"<!-- Generated from {source} by scripts/update_readme.py (`make readme`): "
        "edit the source, not this page. -->\n"
    )


def escape_html(text: str) -> str:
    """``text`` with ``<`` and ``>`` escaped outside code spans: Markdown would take a type
    such as ``map<string, string>`` for an HTML tag and drop it."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside backticks
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def configuration_page() -> str:
    return (
        generated_notice("connector/config.py")
        + """
# Configuration keys

A configuration is a TOML file of sections. Every key can be overridden on the command line
with `--set section.key=value`, where the value is TOML (`--set fetch.concurrency=8`,
`--set 'oci.regions=["us-ashburn-1"]'`) and a bare word is a string; an entry of a table-valued
key is set with `--set output.storage_options.region=eu-frankfurt-1`. The Python API takes the
same overrides, and whole sections as `values` (see [Python API](python-api.md)).

## Environment variables

Every key can also be set by an environment variable named `OCI_IMAGES__SECTION__KEY`: the
prefix, the section and the key in capitals, joined by double underscores. An entry of a
table-valued key adds its name: `OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__REGION=eu-frankfurt-1`
sets `output.storage_options.region` (entry names are taken in lower case).

```shell
export OCI_IMAGES__FETCH__CONCURRENCY=8
export OCI_IMAGES__OCI__REGIONS='["us-ashburn-1", "eu-frankfurt-1"]'
export OCI_IMAGES__OUTPUT__URI=s3://lake/oci
export OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__REGION=eu-frankfurt-1
oci-images run          # no --config: the defaults, the environment and --set
```

A key whose value is a string takes the variable's text as it is; any other key reads it as
TOML, as `--set` does (`8`, `0.5`, `true`, `["a", "b"]`, `{region = "x"}`), a bare word being a
string. Each value is checked as the key is, and a bad one is a configuration error (exit 2)
naming the variable. A variable under `OCI_IMAGES__` that names no key is an error too, naming
it (with the closest key's variable when there is one): a misspelt variable would otherwise
leave its key at the default without a word. (dlt, whose `SECTION__KEY` rule this follows,
only looks up the variables of the keys it knows and ignores the others.) Variables with a
single underscore after the prefix, such as the example DAG's `OCI_IMAGES_CONFIG`, are not
configuration keys and are left alone.

## Precedence

Lowest first: the defaults, the file (`--config`; then the Python API's `values`), the
environment (`OCI_IMAGES__…`), and `--set` with the flags `--profile`, `--region` and `--auth`
of `run`, `plan` and `commit` (the OCI CLI's names for `oci.profile`, `oci.region` and
`oci.auth`). `--config` may be left out: a container then needs neither a configuration file
nor a secret on its command line. Credentials can come from the OCI CLI's own environment
variables (`OCI_CLI_USER`, `OCI_CLI_KEY_CONTENT`, …), with no OCI config file either
([Credentials](../guides/credentials.md)).

The whole configuration is validated before any request is sent; the first problem found exits 2
and names the key ([exit codes](exit-codes.md)); a number must be finite (`nan`, `inf` and
`-inf` are refused: a NaN bound would switch its check off). `configs/example.toml` shows
every key with its help as a comment; it and this table are generated from the key
declarations in `connector/config.py`.

## Keys

"""
        + escape_html(config.markdown_table())
        + "\n"
    )


COLUMN_SECTIONS = {
    "images": (
        "The images dataset",
        "One row per image a listing returned: the API's fields, flattened (`parent__child`), "
        "then load metadata (names starting with `_`). How values are converted, and what is "
        "kept as sent, is in [Snapshots and partitions](../concepts/snapshots.md#rows).",
    ),
    "compartments": (
        "The compartments dataset",
        "One row per compartment the run knows, the root included "
        "([the compartments dataset](../concepts/datasets.md#the-compartments-dataset)). "
        '"derived" columns are computed by the connector; the others come from the Identity '
        "API's Compartment.",
    ),
    "changes": (
        "The changes dataset",
        "Published with `output.changes = true` "
        "([the changes dataset](../concepts/datasets.md#the-changes-dataset)); "
        "`oci-images diff` prints the same rows.",
    ),
}


def columns_page() -> str:
    parts = [
        generated_notice("connector/schema.py"),
        "\n# Columns\n\n"
        "The Parquet types; NDJSON carries the same names and nesting. "
        "`oci-images schema --dataset NAME [--format json]` prints the same tables.\n",
    ]
    for name, columns in schema.DATASETS.items():
        title, about = COLUMN_SECTIONS[name]
        parts.append(f"\n## {title}\n\n{about}\n\n{escape_html(schema.markdown_table(columns))}\n")
    return "".join(parts)


def _fixed_width(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=HELP_WIDTH)


def _commands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError("the parser has no commands")


def _help(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = _fixed_width
    return parser.format_help().rstrip("\n")


def cli_page() -> str:
    parser = cli.build_parser()
    commands = _commands(parser)
    about = {choice.dest: choice.help or "" for choice in commands._choices_actions}
    lines = [
        generated_notice("connector/cli.py"),
        "\n# Command line\n\n"
        "The console script `oci-images` (also `python -m connector`) is a thin layer over the "
        "[Python API](python-api.md). `--log-level` and `--log-format` may come before or after "
        "the command ([logs and progress](../operations/logging.md)); exit codes are listed "
        "in [Exit codes](exit-codes.md).\n\n"
        "| command | does |\n|---|---|\n",
    ]
    lines += [
        f"| [`{name}`](#{name}) | {escape_html(about[name])} |\n" for name in commands.choices
    ]
    lines.append(f"\n```\n{_help(parser)}\n```\n")
    for name, sub in commands.choices.items():
        lines.append(f"\n## {name}\n\n```\n{_help(sub)}\n```\n")
    return "".join(lines)


def log_events_page() -> str:
    keys = "".join(
        f"| `{name}` | {key.type} | {escape_html(key.about)} |\n" for name, key in logs.KEYS.items()
    )
    events = "".join(
        f"| `{name}` | {event.level} | "
        + ", ".join(f"`{k}`" for k in event.keys)
        + f" | {escape_html(event.about)} |\n"
        for name, event in logs.EVENTS.items()
    )
    return (
        generated_notice("connector/logs.py")
        + """
# Log events

Every event the connector logs, with its level and its keys, and every key with its one type:
a key has the same type in every event (any key may be null), so a log aggregator that types a
field by the first value it sees (Elasticsearch, OpenSearch, BigQuery, Datadog) types it right.
How logs are printed, and how a program that embeds the connector gets them, is in
[Logs and progress](../operations/logging.md).

Besides its own keys, every event has """
        + ", ".join(f"`{k}`" for k in logs.COMMON)
        + """; `run_id` and `shard` are on every line of a run.

## Events

| event | level | keys | logged when |
|---|---|---|---|
"""
        + events
        + """
## Keys

| key | type | holds |
|---|---|---|
"""
        + keys
    )


def pages() -> dict[Path, str]:
    """Every generated file (relative to the repository's root) and what it should hold."""
    return {
        REFERENCE / "configuration.md": configuration_page(),
        REFERENCE / "columns.md": columns_page(),
        REFERENCE / "cli.md": cli_page(),
        REFERENCE / "log-events.md": log_events_page(),
        EXAMPLE: config.example_toml(),
    }


def stale(root: Path) -> list[Path]:
    """The generated files under ``root`` that differ from what the code generates now."""
    out = []
    for path, text in pages().items():
        target = root / path
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            out.append(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this)")
    args = parser.parse_args(argv)
    if args.check:
        behind = stale(args.root)
        for path in behind:
            print(f"{path} is not what the code generates: run `make readme`", file=sys.stderr)
        return 1 if behind else 0
    for path, text in pages().items():
        target = args.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
