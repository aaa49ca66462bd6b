"""The offline jobs' own error: input a batch job cannot use (a bad log, vector file,
parameter file or argument). The ``recall`` entry point prints it with exit status 2."""


class OfflineError(Exception):
    """An offline job cannot use its input; the message names the file or the argument."""
