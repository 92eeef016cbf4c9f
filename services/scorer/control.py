"""The guard in front of the repository control RPCs (v2 RepositoryModelLoad / Unload).

Why guarded: whoever can unload the served model takes production down, and a load names a
directory. So, in the spirit of Triton's model-control mode, the RPCs are off unless the scorer
runs with ``--model-control explicit``; then every call needs an admin identity
(``services.common.admin``: the admin bearer token, or a client certificate named in
``--admin-identities``) and a model name that is a plain directory name resolving inside
the repository root. Off answers UNIMPLEMENTED (the operation is switched off on this server, a
retry cannot help) with the flags that switch it on.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from services.common.admin import AdminGuard, parse_identities, read_token
from services.common.auth import certificate_names
from services.common.errors import InvalidArgument, Unimplemented

MODEL_CONTROL_MODES = ("none", "explicit")
"""``none``: control RPCs refused (default); ``explicit``: allowed for admins."""

MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_model_name(name: str, root: Path, field: str = "model_name") -> None:
    """INVALID_ARGUMENT unless ``name`` is one plain directory name inside ``root``.

    The message never repeats the name (it may be a path) nor the root.
    """
    if not name:
        raise InvalidArgument(field, "required (a model name, as ListModels shows it)")
    if (
        len(name) > MAX_NAME_LENGTH
        or not _NAME.fullmatch(name)
        or ".." in name
        or (root / name).resolve().parent != root.resolve()
    ):
        raise InvalidArgument(
            field,
            f"not a model name: use 1-{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no path separators, no '..')",
        )


class RepositoryControl:
    """Whether control RPCs are on, and who may call them."""

    def __init__(self, mode: str, admin_token_file: str, admin_identities: str = "") -> None:
        if mode not in MODEL_CONTROL_MODES:
            raise ValueError(
                f"--model-control: '{mode}' is not one of {', '.join(MODEL_CONTROL_MODES)}"
            )
        self.mode = mode
        self._guard: AdminGuard | None = None
        identities = parse_identities(admin_identities)
        if mode == "explicit":
            if not admin_token_file and not identities:
                raise ValueError(
                    "--model-control explicit needs --admin-token-file (the admin bearer token) "
                    "or --admin-identities (admin client certificate names)"
                )
            token = read_token(admin_token_file) if admin_token_file else None
            self._guard = AdminGuard(token, identities)

    @property
    def enabled(self) -> bool:
        return self._guard is not None

    def authorize(self, context: grpc.aio.ServicerContext, operation: str) -> str:
        """UNIMPLEMENTED when off; otherwise the admin check (UNAUTHENTICATED / PERMISSION_DENIED).

        Returns who the admin is, for the log."""
        if self._guard is None:
            raise Unimplemented(
                f"{operation} is off on this scorer; start it with --model-control explicit "
                "and --admin-token-file or --admin-identities to allow repository control for "
                "admins"
            )
        return self._guard.require(
            context.invocation_metadata(), operation, certificate_names(context)
        )
