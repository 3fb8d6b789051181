"""`streamrec-bench mixed-attack --attackers`: which attackers run, checked before a server starts."""

from __future__ import annotations

import pytest

from benchmarks import mixed_attack


def test_each_attacker_alone_or_both_is_accepted() -> None:
    for names in (["watch"], ["long"], ["watch", "long"]):
        mixed_attack.check_attackers(names)


@pytest.mark.parametrize("names", [[], ["watch", "flood"], ["LONG"]])
def test_an_unknown_or_empty_list_is_refused_naming_the_choices(names: list[str]) -> None:
    with pytest.raises(ValueError, match="choose from watch, long"):
        mixed_attack.check_attackers(names)


def test_run_refuses_before_starting_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_server(bundle: str) -> None:
        raise AssertionError("a server was started")

    monkeypatch.setattr(mixed_attack, "start_server", no_server)
    with pytest.raises(ValueError):
        mixed_attack.run("models/streamrec-cnn-v2", 1.0, attackers=["nope"])


def test_the_cli_flag_parses_a_list_and_refuses_an_unknown_name_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks.cli import build_parser

    args = build_parser().parse_args(["mixed-attack", "--attackers", "long"])
    assert args.attackers == ["long"]
    assert build_parser().parse_args(["mixed-attack"]).attackers == ["watch", "long"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mixed-attack", "--attackers", "watch,nope"])
    assert "choose from watch, long" in capsys.readouterr().err
