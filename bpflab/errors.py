"""The one exception that tasks turn into a clean message and a non-zero exit."""


class LabError(Exception):
    """An expected failure: the message says what went wrong and what to do next."""
