"""The model repository (docs/architecture.md "Model repository"): one torch-free package for
the exporter, the services and the test fixtures.

Modules, one job each:

* ``manifest``   - manifest.json as typed dataclasses: parse/validate and build/serialise;
* ``hashing``    - the one sha256 of model files;
* ``publish``    - atomic staging + rename publishing of a new version;
* ``repository`` - listing models/versions, opening validated versions, file fingerprints;
* ``policy``     - the version policy (``latest:N``, ``specific:V1,V2``);
* ``vocabulary`` - reading and checking the item files (vocabularies, catalogue);
* ``acceptance`` - the one rule for whether a version may be served;
* ``follower``   - the one version follower both services run.
"""

from services.common.model_repository.errors import IntegrityError, ManifestError, VersionRefused
from services.common.model_repository.manifest import (
    MANIFEST_FILE,
    ExporterInfo,
    FeatureSpec,
    FileEntry,
    Manifest,
    TeacherInfo,
    TensorSpec,
    parse_manifest,
)
from services.common.model_repository.policy import VersionPolicy
from services.common.model_repository.repository import ModelRepository, ModelVersion

__all__ = [
    "MANIFEST_FILE",
    "ExporterInfo",
    "FeatureSpec",
    "FileEntry",
    "IntegrityError",
    "Manifest",
    "ManifestError",
    "ModelRepository",
    "ModelVersion",
    "TeacherInfo",
    "TensorSpec",
    "VersionPolicy",
    "VersionRefused",
    "parse_manifest",
]
