"""A node id always fits where it goes: the registry, and the holder names of the stream
leases it takes (``calls.attached_by``), whatever the process id."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from crypto.errors import ConfigError
from gateway.attachments import Attachments
from gateway.nodes import MAX_NODE_ID, NODE_ID_FILE, node_id_of
from gateway.settings import Settings
from storage.catalog.schema import calls, nodes

PID_DIGITS = len(str(2**22))  # Linux's largest pid_max: 4194304


def test_the_longest_node_id_names_leases_that_fit_the_column() -> None:
    attachments = Attachments(None, node="n" * MAX_NODE_ID)  # type: ignore[arg-type]
    holder = attachments.new_holder()
    longest = len(holder) - len(str(os.getpid())) + PID_DIGITS
    assert calls.c.attached_by.type.length is not None
    assert longest <= calls.c.attached_by.type.length
    assert nodes.c.id.type.length is not None and MAX_NODE_ID <= nodes.c.id.type.length


def test_a_longer_node_id_is_refused_from_the_setting_and_from_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(node={"id": "n" * (MAX_NODE_ID + 1)})
    assert Settings(node={"id": "n" * MAX_NODE_ID}).node.id == "n" * MAX_NODE_ID
    (tmp_path / NODE_ID_FILE).write_text("n" * (MAX_NODE_ID + 1))
    with pytest.raises(ConfigError, match="does not hold a node id"):
        node_id_of(Settings(data_dir=tmp_path))


def test_a_made_node_id_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "h" * 255)
    made = node_id_of(Settings(data_dir=tmp_path))
    assert len(made) <= MAX_NODE_ID
    assert node_id_of(Settings(data_dir=tmp_path)) == made
