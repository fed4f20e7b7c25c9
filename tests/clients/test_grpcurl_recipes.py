"""Every recipe of docs/grpcurl.md, run as written against the live suite.

The page's ``console`` blocks are parsed into commands (``$ `` lines, continued
by a trailing ``\\`` or by a heredoc up to its end marker) and expected output
(the other lines; ``...`` stands for left-out lines or text). The blocks run in
order with bash, in one simulated session: ``GATEWAY`` and a fresh ``PIPELINE``
are exported, the working directory is shared, and the variables a recipe sets
(``TOKEN=...``) are handed to the next ones. Each block must exit 0 and print
its expected lines in order (runs of lines not separated by ``...`` contiguous).
A fenced block that is not ``console``, or a command outside a block, fails the
test: every recipe the page shows is one this test runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import pytest

from hevlayer.devstack.testing import LiveSuite

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "grpcurl.md"
BIN = Path(sys.executable).parent

FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1")
ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=")
ELLIPSIS = "..."

# What the page must keep covering (method, and a word its request must contain).
REQUIRED = [
    ("list", ""),
    ("grpc.health.v1.Health/Check", ""),
    ("hevlayer.api.pipeline.v1.PipelineService/CreatePipeline", ""),
    ("hevlayer.api.staging.v1.StagingService/StageDocuments", "-d @"),
    ("hevlayer.api.pipeline.v1.PipelineService/WatchPipelineStatus", "-max-time"),
    ("hevlayer.api.lease.v1.LeaseService/ClaimDocuments", ""),
    ("hevlayer.api.staging.v1.StagingService/ReadChunks", '"fencing_token": "$TOKEN"'),
    ("hevlayer.api.index.v1.IndexService/WriteVectors", '"end_of_document": true'),
    ("hevlayer.api.index.v1.IndexService/Query", '"text":'),
]


@dataclass
class Command:
    """One ``$`` command of a block and the output the page shows for it."""

    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    """One ``console`` block."""

    line: int
    """1-based line of the opening fence."""
    heading: str
    commands: list[Command]

    @property
    def script(self) -> str:
        return "\n".join(command.text for command in self.commands)

    @property
    def where(self) -> str:
        return f"docs/grpcurl.md:{self.line} ({self.heading})"


class RecipeError(AssertionError):
    """The page breaks the recipe format."""


def parse(markdown: str) -> list[Recipe]:
    """The page's recipes; :class:`RecipeError` for a block this test would not run."""
    lines = markdown.splitlines()
    recipes: list[Recipe] = []
    heading = "top"
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = FENCE.match(line)
        if fence is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.lstrip().startswith("$ "):
                raise RecipeError(f"line {index + 1}: a command outside a ```console block: {line.strip()}")
            index += 1
            continue
        marker, language = fence.groups()
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(marker):
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise RecipeError(f"line {start + 1}: the fenced block is never closed")
        index += 1
        if language != "console":
            raise RecipeError(
                f"line {start + 1}: a ```{language or '(no language)'} block; every block of this page "
                "is a ```console recipe that the test runs"
            )
        recipes.append(Recipe(start + 1, heading, _commands(body, start + 2)))
    return recipes


def _commands(body: list[str], first_line: int) -> list[Command]:
    commands: list[Command] = []
    index = 0
    while index < len(body):
        line = body[index]
        if not line.startswith("$ "):
            if not commands:
                raise RecipeError(f"line {first_line + index}: output before the block's first $ command")
            if line.strip():
                commands[-1].expected.append(line.strip())
            index += 1
            continue
        text = [line[2:]]
        while text[-1].endswith("\\"):
            index += 1
            if index == len(body):
                raise RecipeError(f"line {first_line + index - 1}: a continued command at the end of a block")
            text.append(body[index])
        heredoc = HEREDOC.search("\n".join(text))
        if heredoc is not None:
            end = heredoc.group(2)
            while True:
                index += 1
                if index == len(body):
                    raise RecipeError(
                        f"a heredoc ending in {end} is never closed in the block at {first_line}"
                    )
                text.append(body[index])
                if body[index].strip() == end:
                    break
        commands.append(Command("\n".join(text)))
        index += 1
    if not commands:
        raise RecipeError(f"line {first_line - 1}: a ```console block without a $ command")
    return commands


def _pattern(line: str, variables: dict[str, str]) -> re.Pattern[str]:
    for name, value in variables.items():
        line = line.replace(f"${name}", value)
    return re.compile(".*?".join(re.escape(part) for part in line.split(ELLIPSIS)))


def mismatch(recipe: Recipe, output: str, variables: dict[str, str]) -> str | None:
    """Why ``output`` is not what the page shows for ``recipe`` (None: it is)."""
    actual = [line.strip() for line in output.splitlines() if line.strip()]
    position = 0
    for command in recipe.commands:
        segments: list[list[str]] = [[]]
        for line in command.expected:
            if line == ELLIPSIS:
                segments.append([])
            else:
                segments[-1].append(line)
        for segment in filter(None, segments):
            patterns = [_pattern(line, variables) for line in segment]
            found = next(
                (
                    start
                    for start in range(position, len(actual) - len(patterns) + 1)
                    if all(p.fullmatch(actual[start + k]) for k, p in enumerate(patterns))
                ),
                None,
            )
            if found is None:
                shown = "\n".join(f"    {line}" for line in segment)
                first = command.text.splitlines()[0]
                return f"after `{first}` the page shows\n{shown}\nwhich is not in the output"
            position = found + len(patterns)
    return None


def assigned_names(recipes: list[Recipe]) -> list[str]:
    """Variables the recipes set (kept from one block to the next, as in one shell)."""
    names = {
        match.group(1)
        for recipe in recipes
        for command in recipe.commands
        if (match := ASSIGNMENT.match(command.text))
    }
    return sorted(names)


def session_script(recipe: Recipe, names: list[str], state: Path) -> str:
    """The block as a bash script that starts from, and leaves, the session's variables."""
    keep = " ".join(names)
    return (
        "set -o pipefail\n"
        f'if [ -f "{state}" ]; then source "{state}"; fi\n'
        f"{recipe.script}\n"
        "__recipe_status=$?\n"
        + (f'declare -p {keep} > "{state}" 2>/dev/null\n' if keep else "")
        + "exit $__recipe_status\n"
    )


# -- the page's format, without a suite ------------------------------------------------------


def test_every_block_of_the_page_is_a_recipe_covering_the_operator_tasks() -> None:
    recipes = parse(DOC.read_text())
    assert len(recipes) >= len(REQUIRED)
    for recipe in recipes:
        for command in recipe.commands:
            if not ASSIGNMENT.match(command.text):
                assert command.expected, f"{recipe.where}: `{command.text}` shows no output to check"
    commands = [command.text for recipe in recipes for command in recipe.commands]
    for method, word in REQUIRED:
        using = [c for c in commands if "grpcurl" in c and (method == "list" or method in c)]
        if method == "list":
            using = [c for c in using if re.search(r'"\$GATEWAY" list\b', c)]
        assert any(word in c for c in using), f"docs/grpcurl.md has no recipe calling {method} with {word!r}"


def test_the_parser_refuses_what_it_would_not_run() -> None:
    with pytest.raises(RecipeError, match="```sh block"):
        parse("```sh\n$ grpcurl list\n```\n")
    with pytest.raises(RecipeError, match="outside"):
        parse("Run this:\n\n    $ grpcurl list\n")
    with pytest.raises(RecipeError, match="never closed"):
        parse("```console\n$ cat <<EOF\nhello\n```\n")
    with pytest.raises(RecipeError, match="without a \\$ command"):
        parse("```console\n```\n")
    [recipe] = parse(
        textwrap.dedent(
            """\
            ```console
            $ grpcurl -d @ "$GATEWAY" x/Y <<EOF | tee out.json
            {"pipeline_id": "$PIPELINE"}
            EOF
            {
              "id": "$PIPELINE",
              ...
              "token": "..."
            }
            $ echo \\
              done
            done
            ```
            """
        )
    )
    assert [c.text.splitlines()[-1] for c in recipe.commands] == ["EOF", "  done"]
    assert recipe.commands[0].expected == ["{", '"id": "$PIPELINE",', "...", '"token": "..."', "}"]
    variables = {"PIPELINE": "p-1"}
    good = '{\n  "id": "p-1",\n  "other": 1,\n  "token": "17"\n}\ndone\n'
    assert mismatch(recipe, good, variables) is None
    assert mismatch(recipe, good.replace("p-1", "p-2"), variables) is not None
    assert mismatch(recipe, good.replace('"token"', '"other"'), variables) is not None
    assert mismatch(recipe, good.replace("done", "gone"), variables) is not None
    # Lines not separated by ... must be adjacent.
    assert mismatch(recipe, good.replace('  "token": "17"\n}', '  "token": "17"\n  "x": 1\n}'), variables)


# -- the page against the live suite ---------------------------------------------------------


def test_every_recipe_runs_against_the_live_suite(live_suite: LiveSuite, tmp_path: Path) -> None:
    for tool in ("grpcurl", "jq"):
        if shutil.which(tool, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") is None:
            pytest.fail(f"{tool} is not installed (grpcurl: `make bootstrap`; jq: `make system-deps`)")
    recipes = parse(DOC.read_text())
    names = assigned_names(recipes)
    variables = {"GATEWAY": live_suite.gateway, "PIPELINE": f"grpcurl-{uuid4().hex[:8]}"}
    env = {**os.environ, **variables, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    state = tmp_path / "session.sh"
    work = tmp_path / "work"
    work.mkdir()
    ran = 0
    try:
        for recipe in recipes:
            script = tmp_path / f"recipe-{recipe.line}.sh"
            script.write_text(session_script(recipe, names, state))
            done = subprocess.run(
                ["bash", str(script)],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=120,
                check=False,
            )
            context = f"{recipe.where}\n--- commands ---\n{recipe.script}\n--- output ---\n{done.stdout}"
            assert done.returncode == 0, f"exit status {done.returncode}: {context}"
            problem = mismatch(recipe, done.stdout, variables)
            assert problem is None, f"{problem}\n{context}"
            ran += 1
    except AssertionError:
        print("--- gateway log ---\n" + live_suite.log("gateway", 40))
        print("--- embedder worker log ---\n" + live_suite.log("embedder-worker", 40))
        raise
    finally:
        subprocess.run(
            [
                str(BIN / "grpcurl"),
                "-plaintext",
                "-d",
                f'{{"pipeline_id": "{variables["PIPELINE"]}"}}',
                live_suite.gateway,
                "hevlayer.api.pipeline.v1.PipelineService/DeletePipeline",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert ran == len(recipes)
