"""rnnkit's exceptions: the CLI prints them on one line and exits with their ``exit_status``."""


class RnnkitError(ValueError):
    """Bad input (file, corpus, prefix, checkpoint, setting) that the user can fix: exit status 2."""

    exit_status = 2


class TrainingDiverged(RnnkitError):
    """The training loss became NaN or infinite: exit status 3 (the last good epoch is kept)."""

    exit_status = 3


class Stop(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP, or Ctrl-C's SIGINT) stopped training: handled like Ctrl-C (save,
    say how to resume), then the process exits with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
