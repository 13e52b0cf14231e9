"""The packaged models: pinned, verified, assembled once, refused when damaged."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from ai.models import PACKAGED, ModelFile, PackagedModel, _assemble, resolve_model
from crypto.errors import ConfigError


def test_tiny_en_is_used_where_it_lies_after_verification(tmp_path: Path) -> None:
    model = resolve_model("tiny.en", cache_dir=tmp_path)
    assert model.name == "tiny.en"
    assert (model.path / "model.bin").is_file()
    assert not any(tmp_path.iterdir())  # nothing assembled for a one-package model


def test_base_is_assembled_once_into_the_cache_and_reused(tmp_path: Path) -> None:
    first = resolve_model(None, cache_dir=tmp_path)  # None = the default, base
    assert first.name == "base"
    assert first.path.parent == tmp_path
    assert sorted(p.name for p in first.path.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no staging left
    stamp = (first.path / "model.bin").stat().st_mtime_ns
    again = resolve_model("base", cache_dir=tmp_path)
    assert again.path == first.path
    assert (again.path / "model.bin").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_a_damaged_assembly_is_rebuilt(tmp_path: Path) -> None:
    model = resolve_model("base", cache_dir=tmp_path)
    with (model.path / "model.bin").open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    rebuilt = resolve_model("base", cache_dir=tmp_path)
    assert rebuilt.path == model.path
    resolve_model("base", cache_dir=tmp_path)  # verifies


def test_a_file_that_fails_its_pin_is_refused_naming_the_setting(tmp_path: Path) -> None:
    base = PACKAGED["base"]
    wrong = PackagedModel(
        name="base",
        multilingual=True,
        files=tuple(
            dataclasses.replace(f, sha256="0" * 64) if f.name == "config.json" else f
            for f in base.files
        ),
    )
    with pytest.raises(ConfigError, match="CALLVAULT_AI__MODEL.*config.json does not match"):
        _assemble(wrong, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the half-built staging dir is gone


def test_a_missing_package_is_refused(tmp_path: Path) -> None:
    missing = PackagedModel(
        name="gone",
        multilingual=False,
        files=(ModelFile("model.bin", "0" * 64, (("no_such_package_xyz", "model.bin"),)),),
    )
    with pytest.raises(ConfigError, match="no_such_package_xyz"):
        _assemble(missing, tmp_path)


def test_a_model_directory_is_accepted_and_anything_else_refused(tmp_path: Path) -> None:
    tiny = resolve_model("tiny.en", cache_dir=tmp_path)
    own = tmp_path / "my-model"
    shutil.copytree(tiny.path, own)
    resolved = resolve_model(str(own), cache_dir=tmp_path)
    assert (resolved.name, resolved.path) == ("my-model", own.resolve())
    with pytest.raises(ConfigError, match="neither a packaged model"):
        resolve_model(str(tmp_path / "nowhere"), cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="neither a packaged model"):
        resolve_model("large-v3", cache_dir=tmp_path)
