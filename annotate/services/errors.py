"""Errors the annotation services raise; views and the API turn them into 400 / 404 / 409 answers.

Bad input is a `django.core.exceptions.ValidationError` whose message dict names the field
(``{"tiers": ["…"]}``); nothing is written when one is raised.
"""


class TaskNotFound(Exception):
    """The assignment does not exist or belongs to someone else (404: existence is not leaked)."""


class TaskConflict(Exception):
    """The operation clashes with the task's state: skipped, taken by someone else, or a stale draft (409)."""

    def __init__(self, message: str, *, code: str = "conflict"):
        super().__init__(message)
        self.message = message
        self.code = code
