"""Model sources: a NAME/VERSION/ repository (default file, mismatched or broken folders) and the bundle
an in-process command picks. Bundles here are real folders with stand-in files (nothing is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder.config import ServerConfig
from embedder.core.bundle import Bundle, save_bundle
from embedder.core.repository import choose_bundle, from_bundles, scan_repository
from embedder.errors import BundleError, ConfigError, ModelNotFoundError


def make(root: Path, name: str, version: str, folder: str | None = None) -> Bundle:
    src = root / "src"
    src.mkdir(exist_ok=True)
    (src / "model.onnx").write_bytes(f"graph {name} {version}".encode())
    (src / "tokenizer.json").write_text("{}")
    dest = root / "repo" / name / (folder or version)
    return save_bundle(
        dest,
        src / "model.onnx",
        src / "tokenizer.json",
        name=name,
        version=version,
        dim=4,
        max_tokens=8,
        pad_token_id=0,
    )


def test_a_repository_lists_every_version_and_named_defaults(tmp_path: Path) -> None:
    for version in ("1.9.2", "1.10.0"):
        make(tmp_path, "cnn", version)
    make(tmp_path, "minilm", "7")
    (tmp_path / "repo" / "minilm" / "default").write_text("7\n")
    found = scan_repository(tmp_path / "repo")
    assert sorted((b.manifest.name, b.manifest.version) for b in found.bundles) == [
        ("cnn", "1.10.0"),
        ("cnn", "1.9.2"),
        ("minilm", "7"),
    ]
    assert found.defaults == {"minilm": "7"} and found.errors == []


def test_a_folder_must_be_its_manifest_s_name_and_version(tmp_path: Path) -> None:
    make(tmp_path, "cnn", "1", folder="2")
    found = scan_repository(tmp_path / "repo")
    assert found.bundles == [] and "the folder must be NAME/VERSION/" in found.errors[0]


def test_an_unreadable_version_is_reported_not_raised(tmp_path: Path) -> None:
    bundle = make(tmp_path, "cnn", "1")
    (bundle.path / "model.onnx").write_bytes(b"half copied")
    found = scan_repository(tmp_path / "repo")
    assert found.bundles == [] and found.unreadable == {("cnn", "1")}
    assert "sha256" in found.errors[0]


def test_a_name_must_be_nameable_in_a_request(tmp_path: Path) -> None:
    bundle = make(tmp_path, "a@b", "1")
    with pytest.raises(BundleError, match="cannot be named in a request"):
        from_bundles([bundle.path])


def test_two_bundles_of_one_version_are_a_config_error(tmp_path: Path) -> None:
    first = make(tmp_path, "cnn", "1")
    copy = make(tmp_path, "cnn", "1", folder="copy")
    with pytest.raises(ConfigError, match="both cnn@1"):
        from_bundles([first.path, copy.path])


def test_choose_bundle_resolves_like_a_request(tmp_path: Path) -> None:
    old, new = make(tmp_path, "cnn", "1"), make(tmp_path, "cnn", "2")
    config = ServerConfig(bundle=f"{old.path},{new.path}")
    assert choose_bundle(config).manifest.version == "2"  # the first name, at its highest version
    assert choose_bundle(config, "cnn@1").path == old.path
    repo = ServerConfig(model_repository=str(tmp_path / "repo"))
    (tmp_path / "repo" / "cnn" / "default").write_text("1")
    assert choose_bundle(repo, "cnn").manifest.version == "1"
    with pytest.raises(ModelNotFoundError, match="cnn@1, cnn@2"):
        choose_bundle(config, "cnn@3")
