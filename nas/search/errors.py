"""The search's error for bad user input about a study (read by the CLIs as a one-line message)."""


class StudyError(ValueError):
    """The study cannot be created, found, opened or resumed as asked (one-line message)."""
