"""Exception classes of convhub. Each message says what was wrong and what is accepted."""
from __future__ import annotations


class HubError(Exception):
    """Base class of every error convhub raises on purpose."""


class RegistryError(HubError, ValueError):
    """models.yaml (or another registry file) is malformed: names the file, entry and field."""


class UnknownModelError(HubError, KeyError):
    """A model name that is not in the registry; carries close suggestions."""

    def __init__(self, name: str, suggestions: list[str], known: list[str]):
        self.name, self.suggestions, self.known = name, suggestions, known
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown model {name!r}.{hint} Run `convhub list` to see all {len(known)} models.")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class WeightsError(HubError):
    """Weights could not be obtained or read."""


class ChecksumError(WeightsError):
    """A weight file does not hash to what the registry or lock file expects."""

    def __init__(self, path: str, expected: str, actual: str, source: str = ""):
        self.path, self.expected, self.actual = path, expected, actual
        where = f" (from {source})" if source else ""
        super().__init__(
            f"checksum mismatch for {path}{where}: expected sha256 {expected}, got {actual}. "
            "The file was not added to the cache; re-run `convhub pull` or pass weights=PATH to a trusted copy."
        )


class UnsafeCheckpointError(WeightsError):
    """A checkpoint carries pickled code or objects beyond plain tensors; it was refused, never executed."""


class OfflineError(WeightsError):
    """No network (or no reachable source) and the weights are not in the cache."""


class IncompatibleWeightsError(WeightsError):
    """A state_dict does not match the architecture (missing/unexpected keys or shapes)."""


class InputShapeError(HubError, ValueError):
    """A tensor given to a feature extractor has the wrong shape or dtype."""


class StageError(HubError, ValueError):
    """Unknown stage names, or a trainable_stages count out of range."""
