"""Why a version of the model repository cannot be used; every message names the file or field.

Three kinds, because callers react differently: a malformed manifest and damaged files are the
publisher's fault (refuse the version, keep serving the old one), a refusal by the acceptance rule
covers everything else that makes a version unservable (graph does not load, wrong signature,
non-finite warm-up output).
"""

from __future__ import annotations


class ManifestError(ValueError):
    """manifest.json is missing or does not follow the format; the message names the field."""


class IntegrityError(ValueError):
    """A file of a version is missing or its size / sha256 differs from the manifest."""


class VersionRefused(ValueError):
    """A version failed the acceptance rule or its service-specific load; the message says why."""
