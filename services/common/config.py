"""Typed service configuration: one frozen dataclass per service, one CLI flag per field.

Why a dataclass per service: every default lives in exactly one place (the field), is documented
there (the ``help`` text doubles as ``--help`` output) and is type-checked. The same declaration
drives three sources, in increasing priority:

1. the field default,
2. the environment variable ``XDREC_<FIELD>`` (how the Helm chart configures containers),
3. the command-line flag ``--<field-with-dashes>``.

Tests build configs directly with the dataclass constructor and never touch the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.common.endpoints import LOOPBACK
from services.common.tls import TlsConfig

ENV_PREFIX = "XDREC_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

C = TypeVar("C")


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """Declares a config field with its default and the help text shown by ``--help``."""
    return field(default=default, metadata={"help": help, "choices": choices})


def env_name(field_name: str) -> str:
    """``model_repo`` -> ``XDREC_MODEL_REPO``."""
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    """``model_repo`` -> ``--model-repo``."""
    return "--" + field_name.replace("_", "-")


def parse_bool(text: str) -> bool:
    """Parses the boolean spellings accepted in environment variables."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


class BoolFlag(argparse.Action):
    """``--x`` / ``--x true|false`` / ``--no-x``: the same spellings as the environment variable."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        negated = [f"--no-{s[2:]}" for s in option_strings if s.startswith("--")]
        kwargs.update(nargs="?", metavar="BOOL")
        super().__init__([*option_strings, *negated], dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if option_string and option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        try:
            setattr(namespace, self.dest, True if values is None else parse_bool(values))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument {option_string}: {exc}")


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Adds one flag per field of dataclass ``cls``; defaults come from the environment first.

    ``overrides`` replaces field defaults (used by ``serve all`` to give each child its own port).
    argparse applies ``type`` to string defaults, so a malformed ``XDREC_PORT=abc`` is reported
    exactly like a malformed ``--port abc``.
    """
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        default = overrides.get(f.name, f.default)
        env = env_name(f.name)
        help_text = f"{f.metadata.get('help', '')} (env {env}; default: %(default)s)"
        if env in environ:
            default = environ[env]
        if kind is bool:
            if isinstance(default, str):
                default = parse_bool(default)
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                action=BoolFlag,
                default=default,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                type=kind,
                default=default,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def config_from_args(cls: type[C], namespace: argparse.Namespace) -> C:
    """Builds the config dataclass from parsed arguments (extra attributes are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {name: getattr(namespace, name) for name in names if hasattr(namespace, name)}
    return cls(**values)


@dataclass(frozen=True)
class ServerConfig:
    """Settings every gRPC service shares; service configs extend this class."""

    host: str = option(
        LOOPBACK,
        "interface the gRPC server and /metrics bind to (0.0.0.0 = every interface, what a "
        "container needs)",
    )
    port: int = option(0, "gRPC port (0 = pick a free port)")
    metrics_port: int = option(0, "Prometheus /metrics HTTP port (0 disables the endpoint)")
    grace_period_s: float = option(
        5.0, "seconds in-flight RPCs may finish after SIGTERM/SIGINT before they are cancelled"
    )
    max_message_mb: int = option(64, "largest gRPC message accepted or sent, in MiB")
    max_concurrent_rpcs: int = option(
        0, "RPCs served at once before new ones get RESOURCE_EXHAUSTED (0 = unlimited)"
    )
    log_level: str = option(
        "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )
    access_log: bool = option(True, "log one JSON line per RPC (method, status code, latency)")
    tls_cert: str = option("", "PEM certificate chain to serve TLS with (empty = plaintext)")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_ca: str = option("", "PEM CA bundle that client certificates must chain to")
    tls_client_auth: bool = option(
        False, "require a client certificate signed by --tls-ca (mutual TLS)"
    )
    tls_allowed_clients: str = option(
        "",
        "comma-separated client certificate names (DNS SAN or CN) admitted; empty = any "
        "certificate signed by --tls-ca",
    )
    auth_token_file: str = option(
        "",
        "file of bearer tokens, one 'TOKEN' or 'PRINCIPAL TOKEN' per line: calls then need "
        "'authorization: Bearer <token>' or a client certificate (health and reflection stay "
        "open); empty = no token check",
    )
    mtls_port: int = option(
        0,
        "extra port serving the same API that requires a client certificate signed by "
        "--tls-ca, next to a main port that takes bearer tokens (gRPC Python cannot make a "
        "client certificate optional on one port); 0 = none",
    )
    health_port: int = option(
        0,
        "extra plaintext port serving only grpc.health.v1, for probes that cannot speak TLS "
        "(kubelet gRPC probes); 0 = none",
    )

    @property
    def allowed_client_names(self) -> str:
        """Certificate names the auth policy admits (``--tls-allowed-clients``); a service may
        add its own (the scorer: its admin identities)."""
        return self.tls_allowed_clients

    @property
    def mtls(self) -> TlsConfig:
        """The settings of ``--mtls-port``: the server certificate, client certificates required."""
        return TlsConfig(
            cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca, require_client_auth=True
        )

    @property
    def tls(self) -> TlsConfig:
        """The server's certificate settings."""
        return TlsConfig(
            cert=self.tls_cert,
            key=self.tls_key,
            ca=self.tls_ca,
            require_client_auth=self.tls_client_auth,
        )
