"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class LikenessError(Exception):
    """Bad input or an environment problem, explained in one line for the user."""


class TrainingCancelled(Exception):
    """Raised from a training-step hook to stop a run cleanly at a step boundary."""
