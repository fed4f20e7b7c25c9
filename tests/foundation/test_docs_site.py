"""The documentation site's generated API reference (docs/reference/, scripts/gen_api_reference.py).

`make docs` builds the whole site with `mkdocs build --strict` (broken links and anchors, pages
missing from the nav); these tests keep the reference in step with the protos.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_api_reference.py"
REFERENCE = ROOT / "docs" / "reference"
API_MODULES = sorted(ROOT.glob("libs/common/src/hevlayer/api/*/v1/*_pb2.py"))

SAMPLE_PROTO = """\
syntax = "proto3";

// A sample package: every construct the reference renders.
package sample.api.v1;

import "google/protobuf/timestamp.proto";

// Streams things.
service ThingService {
  // Reads one thing.
  rpc GetThing(GetThingRequest) returns (Thing);
  // Watches things as they change.
  rpc WatchThings(GetThingRequest) returns (stream Thing);
  // Uploads many things.
  rpc PutThings(stream Thing) returns (GetThingRequest);
  // Talks both ways.
  rpc Chat(stream Thing) returns (stream Thing);
}

// Asks for a thing by <id>; see *all* of __init__ [sic] | pipes.
message GetThingRequest {
  // The id.
  string id = 1;
}

// A thing.
message Thing {
  reserved 9, 12 to 14;
  reserved "legacy";

  // How big it is.
  enum Size {
    // Never sent.
    SIZE_UNSPECIFIED = 0;
    // Small.
    SIZE_SMALL = 1 [deprecated = true];
  }

  // A part of a thing.
  message Part {
    // The part's name.
    string name = 1;
  }

  // Labels by key.
  map<string, Part> parts = 1;
  // Counts by key.
  map<string, int64> counts = 2;
  // Set or not.
  optional uint32 weight = 3;
  // Old.
  string old = 4 [deprecated = true];
  // The size.
  Size size = 5;
  // When.
  google.protobuf.Timestamp at = 6;
  // How it was made.
  oneof origin {
    // Made by hand.
    string hand = 7;
    // Made by a machine.
    Part machine = 8;
  }
  // Tags.
  repeated string tags = 10;
}
"""


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False, cwd=ROOT
    )


def load_script() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module("gen_api_reference")
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_committed_reference_is_what_the_protos_generate() -> None:
    result = run_script("--check")
    assert result.returncode == 0, f"{result.stderr}\n(run 'make docs-api' and commit docs/reference/)"


def test_check_fails_on_a_changed_comment_and_on_a_stray_page(tmp_path: Path) -> None:
    protos, out = tmp_path / "protos", tmp_path / "reference"
    shutil.copytree(ROOT / "protos", protos)
    shutil.copytree(REFERENCE, out)
    assert run_script("--protos", str(protos), "--out", str(out), "--check").returncode == 0

    lease = protos / "hevlayer/api/lease/v1/lease.proto"
    text = lease.read_text()
    assert "// Claims, heartbeats and transitions documents" in text
    lease.write_text(
        text.replace("// Claims, heartbeats and transitions documents", "// Hands out documents")
    )
    (out / "hevlayer.api.removed.v1.md").write_text("# gone\n")
    result = run_script("--protos", str(protos), "--out", str(out), "--check")
    assert result.returncode == 1
    assert "+Hands out documents" in result.stderr
    assert "hevlayer.api.lease.v1.md" in result.stderr
    assert "hevlayer.api.removed.v1.md: not generated from any proto package" in result.stderr
    assert "run 'make docs-api'" in result.stderr

    assert run_script("--protos", str(protos), "--out", str(out)).returncode == 0
    assert not (out / "hevlayer.api.removed.v1.md").exists()
    assert "Hands out documents" in (out / "hevlayer.api.lease.v1.md").read_text()
    assert run_script("--protos", str(protos), "--out", str(out), "--check").returncode == 0


def test_a_proto_that_does_not_compile_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.proto").write_text('syntax = "proto3";\nmessage Broken { NoSuchType x = 1; }\n')
    result = run_script("--protos", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "NoSuchType" in result.stderr
    assert "protoc failed" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module_path", API_MODULES, ids=lambda p: p.stem)
def test_reference_lists_every_rpc_field_and_enum_value_of_the_generated_code(module_path: Path) -> None:
    """Checked against the committed generated Python, not against the script's own reading."""
    relative = module_path.relative_to(ROOT / "libs/common/src").with_suffix("")
    module = importlib.import_module(".".join(relative.parts))
    file: FileDescriptor = module.DESCRIPTOR
    page = (REFERENCE / f"{file.package}.md").read_text()
    for service in file.services_by_name.values():
        assert f"\n### {service.name}\n" in page
        for method in service.methods:
            assert f"`/{service.full_name}/{method.name}`" in page, method.full_name

    def messages(descriptors: Mapping[str, Descriptor]) -> list[Descriptor]:
        found = []
        for message in descriptors.values():
            if not message.GetOptions().map_entry:
                found.append(message)
                found += messages(message.nested_types_by_name)
        return found

    for message in messages(file.message_types_by_name):
        heading = message.full_name.removeprefix(file.package + ".")
        section = page.split(f"\n### {heading}\n", 1)[1].split("\n### ", 1)[0]
        for fld in message.fields:
            assert re.search(rf"^\| `{fld.name}` \| {fld.number} \|", section, re.M), fld.full_name
    enums: list[EnumDescriptor] = list(file.enum_types_by_name.values())
    for message in messages(file.message_types_by_name):
        enums += message.enum_types
    for enum in enums:
        section = page.split(f"\n### {enum.full_name.removeprefix(file.package + '.')}\n", 1)[1]
        for value in enum.values:
            assert f"| `{value.name}` | {value.number} |" in section.split("\n### ", 1)[0], value.name


def test_every_construct_renders_with_links_and_escaped_comments(tmp_path: Path) -> None:
    protos = tmp_path / "protos" / "sample" / "api" / "v1"
    protos.mkdir(parents=True)
    (protos / "sample.proto").write_text(SAMPLE_PROTO)
    result = run_script("--protos", str(tmp_path / "protos"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["index.md", "sample.api.v1.md"]
    page = (tmp_path / "out" / "sample.api.v1.md").read_text()

    assert page.startswith("<!-- Generated by scripts/gen_api_reference.py")
    assert "\n# sample.api.v1\n\nA sample package: every construct the reference renders.\n" in page
    assert "`/sample.api.v1.ThingService/GetThing` · unary" in page
    assert "`/sample.api.v1.ThingService/WatchThings` · server streaming" in page
    assert "`/sample.api.v1.ThingService/PutThings` · client streaming" in page
    assert "`/sample.api.v1.ThingService/Chat` · bidirectional streaming" in page
    assert "| stream [Thing](#thing) | stream [Thing](#thing) |" in page
    assert "| [GetThingRequest](#getthingrequest) | [Thing](#thing) |" in page
    # Plain-text comments: no HTML tag, no emphasis, no link, no table break.
    assert "Asks for a thing by &lt;id&gt;; see \\*all\\* of \\_\\_init\\_\\_ \\[sic\\] \\| pipes." in page

    assert "| `parts` | 1 | map&lt;`string`, [Thing.Part](#thingpart)&gt; | map | Labels by key. |" in page
    assert "| `counts` | 2 | `map<string, int64>` | map | Counts by key. |" in page
    assert "| `weight` | 3 | `uint32` | optional | Set or not. |" in page
    assert "| `old` | 4 | `string` | deprecated | Old. |" in page
    assert "| `size` | 5 | [Thing.Size](#thingsize) |  | The size. |" in page
    timestamp = "https://protobuf.dev/reference/protobuf/google.protobuf/#timestamp"
    assert f"| `at` | 6 | [google.protobuf.Timestamp]({timestamp}) |  | When. |" in page
    assert "| `hand` | 7 | `string` | oneof `origin` | Made by hand. |" in page
    assert "| `machine` | 8 | [Thing.Part](#thingpart) | oneof `origin` | Made by a machine. |" in page
    assert "| `tags` | 10 | `string` | repeated | Tags. |" in page
    assert "Oneof `origin` (at most one of `hand`, `machine` is set): How it was made." in page
    assert "Oneof `_weight`" not in page
    assert "Reserved: 9, 12 to 14, `legacy`." in page

    assert "\n### Thing.Part\n\nA part of a thing.\n" in page
    part = page.split("\n### Thing.Part\n", 1)[1].split("\n### ", 1)[0]
    assert "Used by: [Thing.parts](#thing), [Thing.machine](#thing)." in part
    assert "| `SIZE_SMALL` | 1 | Small. (deprecated) |" in page
    assert "[ThingService.WatchThings (response)](#thingservicewatchthings)" in page
    assert "#### ThingService.WatchThings" in page

    index = (tmp_path / "out" / "index.md").read_text()
    assert (
        "| [sample.api.v1](sample.api.v1.md) | [ThingService](sample.api.v1.md#thingservice) "
        "| A sample package: every construct the reference renders. |"
    ) in index


@pytest.mark.parametrize("heading", ["LeaseService.ClaimDocuments", "Thing.Part", "Job_State", "ANode-2 x"])
def test_anchors_are_the_slugs_of_the_markdown_toc(heading: str) -> None:
    """mkdocs checks every generated link's anchor; the script must predict the same slugs."""
    from markdown.extensions.toc import slugify  # type: ignore[import-untyped]

    assert load_script().slug(heading) == slugify(heading, "-")
