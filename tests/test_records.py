"""The records kept between builds (a stage's cache entry, the output folder's state): each written and read
in one place, and one of another version is not read but made again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from imagebuilder.disk.usage import Usage
from imagebuilder.engine.entry import StageRecord, Unusable, read_record, write_record
from imagebuilder.outputs.state import STATE, EmitState, ImageOutputs, MadeFrom, OutputFile, read_state, write_state
from imagebuilder.sources.inventory import Inventory, Package

HELLO = Package("hello", "2.10-3", "arm64", "hello", "2.10-3", licenses=("GPL-3+",))
RECORD = StageRecord({"hello": "2.10-3"}, ("/etc/motd",), ("beacon.service",), "ab" * 32, 4096,
                     Usage(4096, ((0, 4096),), 1024), ("cd" * 32,), ("k1",), ("pi4b",),
                     Inventory({"ID": "debian"}, (HELLO,)))


def test_a_stage_record_reads_back_as_written(tmp_path: Path) -> None:
    image = tmp_path / "worker-0123.img"
    image.write_bytes(b"\0" * 4096)
    write_record(image, RECORD)
    assert read_record(image) == RECORD


def test_a_stage_record_of_another_version_or_size_is_not_used(tmp_path: Path) -> None:
    image = tmp_path / "worker-0123.img"
    assert read_record(image) is None
    image.write_bytes(b"\0" * 4096)
    document = json.loads(RECORD.to_json())
    del document["version"]
    image.with_suffix(".json").write_text(json.dumps(document))
    older = read_record(image)
    assert isinstance(older, Unusable) and "another version" in older.reason
    write_record(image, RECORD)
    image.write_bytes(b"\0" * 512)
    assert isinstance(read_record(image), Unusable)


def test_the_emit_state_reads_back_as_written(tmp_path: Path) -> None:
    outputs = ImageOutputs(MadeFrom("ef" * 32, True, "xz", "1.6"),
                           {"worker.img": OutputFile("ab" * 32, (4096, 17, 42))}, ("pi4b",))
    state = EmitState("12" * 32, {"worker": outputs})
    write_state(tmp_path, state, 0o600)
    assert read_state(tmp_path) == state


def test_an_emit_state_of_another_version_writes_every_output_again(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    assert read_state(tmp_path) == EmitState(None)
    (tmp_path / STATE).write_text(json.dumps({"recipe": "12" * 32, "images": {}}))
    with caplog.at_level(logging.INFO, logger="imagebuilder"):
        assert read_state(tmp_path) == EmitState(None)
    assert "another version" in caplog.text
