"""`Bundle`: a model bundle folder as the runtime's public API names it, opened and validated.

A thin handle over what already exists, so callers outside the runtime need one name instead of five modules:
`contracts.bundle.BundleMetadata.read` validates metadata.json (schema, confined names, duplicate keys),
`contracts.bundle.check_model_file` proves a listed file is the one recorded (size and sha256, every member file
too), `Classifier.from_bundle` opens a model (through the open stage, `classifier.open_bundle_model`),
`verify.verify_bundle` runs this device's checks. Nothing here writes into a bundle: the runtime reads bundles;
export writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tumor_edge.contracts.bundle import BundleMetadata, check_model_file

if TYPE_CHECKING:
    from tumor_edge.runtime.backends import BackendOptions
    from tumor_edge.runtime.classifier import Classifier
    from tumor_edge.runtime.verify import VerifyReport


@dataclass(frozen=True)
class Bundle:
    """A bundle folder and its validated metadata.json. `Bundle.open` raises a one-line ModelError naming the
    file for a folder that is not a valid bundle; model files are checked when asked (`check`) or opened."""

    path: Path
    metadata: BundleMetadata

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Read and validate `path`/metadata.json (no model file is read yet: cheap)."""
        path = Path(path)
        return cls(path, BundleMetadata.read(path))

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.classes)

    @property
    def models(self) -> list[str]:
        """The model files the bundle lists."""
        return list(self.metadata.models)

    def check(self, name: str | None = None) -> list[Path]:
        """Prove the listed model files (or the one named) are the ones recorded: present, of the recorded size
        and sha256, every member file too. Returns their paths; a BundleIntegrityError or ModelError (one line
        naming the file) for the first that is not."""
        names = [name] if name is not None else self.models
        return [check_model_file(self.path, n, self.metadata)[0] for n in names]

    def classifier(self, model_file: str | None = None, options: BackendOptions | None = None) -> Classifier:
        """A Classifier on one of the bundle's files (None: this device's measured choice)."""
        from tumor_edge.runtime.classifier import Classifier

        return Classifier.from_bundle(self.path, model_file=model_file, options=options)

    def verify(self, **kwargs) -> VerifyReport:
        """This device's checks (`verify_bundle`'s keyword arguments): integrity, the recorded reference
        outputs, optionally labelled data; never raises for a bad bundle."""
        from tumor_edge.runtime.verify import verify_bundle

        return verify_bundle(self.path, **kwargs)
