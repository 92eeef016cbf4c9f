"""Request checks shared by more than one service (same field, same message everywhere)."""

from __future__ import annotations

from services.common.errors import InvalidArgument

DEFAULT_MAX_USER_ID_LENGTH = 256


def validate_user_id(user_id: str, max_length: int = DEFAULT_MAX_USER_ID_LENGTH) -> None:
    """INVALID_ARGUMENT naming ``user_id`` when it is empty or longer than ``max_length``."""
    if not user_id:
        raise InvalidArgument("user_id", "required (a non-empty string)")
    if len(user_id) > max_length:
        raise InvalidArgument(
            "user_id", f"{len(user_id)} characters exceed the limit of {max_length}"
        )
