"""The one exception type for bad user input: the CLI prints it on one line and exits 2."""


class RnnkitError(ValueError):
    """Bad input (file, corpus, prefix, checkpoint, setting) that the user can fix."""
