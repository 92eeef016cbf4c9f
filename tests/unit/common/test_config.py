"""Config dataclasses: defaults, XDREC_* environment variables and flags, in that priority."""

from __future__ import annotations

import argparse

import pytest

from services.common.config import add_config_arguments, config_from_args, env_name, flag_name
from services.encoder.config import EncoderConfig
from services.ranker.config import RankerConfig
from services.scorer.config import ScorerConfig


def parse(cls: type, argv: list[str], environ: dict[str, str]):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_arguments(parser, cls, environ=environ)
    return config_from_args(cls, parser.parse_args(argv))


def test_names() -> None:
    assert env_name("model_repo") == "XDREC_MODEL_REPO"
    assert flag_name("model_repo") == "--model-repo"


def test_defaults_match_the_documented_ports() -> None:
    assert parse(EncoderConfig, [], {}).port == 50051
    assert parse(ScorerConfig, [], {}).port == 50052
    ranker = parse(RankerConfig, [], {})
    assert (ranker.port, ranker.max_k, ranker.max_candidates) == (50053, 100, 5000)
    assert parse(EncoderConfig, [], {}).max_candidates == 5000


def test_environment_overrides_default_and_flag_overrides_environment() -> None:
    environ = {"XDREC_MODEL_REPO": "/env/repo", "XDREC_PORT": "6000", "XDREC_ACCESS_LOG": "false"}
    config = parse(ScorerConfig, [], environ)
    assert (config.model_repo, config.port, config.access_log) == ("/env/repo", 6000, False)
    config = parse(ScorerConfig, ["--port", "7000", "--access-log"], environ)
    assert (config.port, config.access_log) == (7000, True)


def test_bad_environment_value_is_reported_like_a_bad_flag(capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ScorerConfig, environ={"XDREC_PORT": "abc"})
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "--port: invalid int value: 'abc'" in capsys.readouterr().err


def test_choices_are_enforced() -> None:
    with pytest.raises(argparse.ArgumentError):
        parse(ScorerConfig, ["--graph-optimization", "max"], {})


def test_boolean_flags_accept_every_spelling() -> None:
    assert parse(ScorerConfig, ["--access-log", "false"], {}).access_log is False
    assert parse(ScorerConfig, ["--access-log=no"], {}).access_log is False
    assert parse(ScorerConfig, ["--no-access-log"], {}).access_log is False
    assert parse(ScorerConfig, ["--access-log"], {"XDREC_ACCESS_LOG": "0"}).access_log is True
