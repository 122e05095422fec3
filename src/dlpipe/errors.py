"""Errors that the CLI turns into one clear paragraph and a documented exit code."""

from __future__ import annotations

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # e.g. ONNX parity outside tolerance
EXIT_BAD_INPUT = 2  # bad usage, bad option value, unusable data or file
EXIT_ENVIRONMENT = 3  # missing dependency, unavailable provider or device, disk full
EXIT_INTERNAL = 70  # a bug in dlpipe (EX_SOFTWARE): traceback saved to crash.log, never printed


class DlpipeError(Exception):
    """Base class: carries a user-facing message and the process exit code."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def paragraph(self) -> str:
        """The one-paragraph text shown to the user."""
        return f"{self.message} {self.hint}" if self.hint else self.message


class BadInput(DlpipeError):
    """A file, folder or option value dlpipe cannot use (exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class CheckFailed(DlpipeError):
    """A check ran and failed, e.g. parity outside tolerance (exit code 1)."""

    exit_code = EXIT_CHECK_FAILED


class Diverged(CheckFailed):
    """A loss became NaN/Inf: training stops, the last good checkpoint stays (exit code 1)."""


class EnvironmentProblem(DlpipeError):
    """Something missing from this machine: a package, a device, a provider (exit code 3)."""

    exit_code = EXIT_ENVIRONMENT


class NotImplementedYet(DlpipeError):
    """A command that exists in the tree but is not built yet (exit code 2)."""

    exit_code = EXIT_BAD_INPUT
