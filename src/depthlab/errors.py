"""Errors the user should see as one clear message (the CLI prints them without a traceback)."""


class DepthlabError(Exception):
    """Base of every error that is the user's to fix (a bad spec, a missing file, ...)."""


class SpecError(DepthlabError, ValueError):
    """A configuration field has a bad value. The message names the field and the allowed values."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: got {value!r}; allowed: {allowed}")


class DataError(DepthlabError):
    """A dataset file is missing or corrupt. The message names the file, what was expected and the fix."""
