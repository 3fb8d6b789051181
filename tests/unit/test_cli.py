"""`streamrec-embedder embed` / `info`, the one-line error on a bad bundle, each subcommand's --help, and the
default bundle from any working directory."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedder import config
from embedder.cli import build_parser, main
from embedder.cli_flags import CONFIG_HELP
from embedder.config import ServerConfig
from embedder.core.bundle import Bundle, load_bundle
from embedder.core.engine import EmbeddingEngine

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / config.DEFAULT_BUNDLE


def test_embed_args_to_json_lines(
    bundle: Bundle, reference: EmbeddingEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["embed", "--bundle", str(bundle.path), "first text", "second"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == ["first text", "second"]
    got = np.array([r["embedding"] for r in lines], dtype=np.float32)
    np.testing.assert_allclose(got, reference.embed_in_process(["first text", "second"]), atol=1e-6)


def test_embed_reads_stdin(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\nthree\n"))
    assert main(["embed", "--bundle", str(bundle.path), "--dimensions", "64"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == ["one", "two", "three"]
    assert {len(r["embedding"]) for r in lines} == {64}


def test_info_prints_manifest_and_limits(bundle: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--bundle", str(bundle.path), "--max-texts-per-request", "8"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"]["sha256"] == bundle.manifest.sha256
    assert info["limits"]["max_texts_per_request"] == 8


def test_bad_bundle_one_line_error(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle.path, broken)
    with (broken / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    assert main(["serve", "--bundle", str(broken), "--port", "0", "--metrics-port", "-1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err and err.startswith("streamrec-embedder: error:")
    assert main(["info", "--bundle", str(tmp_path / "missing")]) == 1
    assert "not found" in capsys.readouterr().err


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"^\s+(--[a-z][a-z-]*)", help_text, re.MULTILINE))


def test_every_config_field_has_one_sentence_of_help() -> None:
    for f in dataclasses.fields(ServerConfig):
        sentence = CONFIG_HELP.get(f.name, "")
        assert sentence.endswith(".") and ". " not in sentence, (
            f"config field {f.name!r} needs one sentence of --help in embedder/cli_flags.py CONFIG_HELP "
            f"(and a place in COMMAND_FIELDS if a subcommand other than serve reads it); got {sentence!r}"
        )
    assert set(CONFIG_HELP) == {f.name for f in dataclasses.fields(ServerConfig)}


@pytest.mark.parametrize("command", ["embed", "info", "embed-file", "explain", "health"])
def test_each_subcommand_lists_its_own_flags_each_with_a_sentence(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(capsys, command)
    flags = _flags(text)
    serve_only = {"--port", "--host", "--grace-period-s", "--max-concurrent-rpcs", "--tls-client-ca-file"}
    assert not flags & serve_only, f"{command} --help lists serve's {sorted(flags & serve_only)}"
    assert "--api-keys" not in flags  # a secret is never a flag
    if command != "health":
        assert "--bundle" in flags
    # Every flag is followed by a description: on its line, or on the next when the flag is long.
    for match in re.finditer(r"^  (--[a-z-]+)(?: [A-Z_]+)?( *)(.*)$", text, re.MULTILINE):
        flag, gap, rest = match.groups()
        following = text[match.end() + 1 :].split("\n", 1)[0]
        described_below = following.startswith(" " * 10) and not following.lstrip().startswith("-")
        assert (gap and rest) or described_below, f"{command} {flag} has no description"


def test_serve_lists_every_setting_but_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    flags = _flags(_help(capsys, "serve"))
    expected = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(ServerConfig)}
    assert flags - {"--help"} == expected - {"--api-keys"}


def test_health_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help(capsys, "health").split())
    assert "(default: 127.0.0.1:50051)" in text
    assert "(default: 3.0)" in text


def test_default_bundle_is_found_from_any_directory(tmp_path: Path) -> None:
    """The committed default bundle, with no --bundle, from a directory that is not the checkout."""
    proc = subprocess.run(
        [sys.executable, "-m", "embedder.cli", "embed", "a text from elsewhere"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_EMBEDDER_")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["embedding"]) == load_bundle(DEFAULT_BUNDLE).manifest.dim


def test_an_explicit_relative_bundle_stays_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["info", "--bundle", "models/elsewhere"]) == 1
    assert "models/elsewhere" in capsys.readouterr().err


def test_api_keys_are_never_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14, defect 9: `--api-keys k` put the key in every `ps` listing; keys come from the env or a
    file only (the env and file paths are tested against a real server in test_hardening_security.py).
    No abbreviations either: argparse would take `--api-keys k` as `--api-keys-file k`."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert "--api-keys" not in flags and not sub.allow_abbrev, name
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["serve", "--api-keys", "secret-key"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --api-keys" in capsys.readouterr().err


def test_metrics_page_binds_loopback_by_default() -> None:
    """Issue 14, defect 9: /metrics (plaintext, no auth) bound 0.0.0.0 unless told otherwise."""
    assert ServerConfig().metrics_host == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).metrics_host is None  # the default, not a flag value
