"""The dev tools' own error: input they cannot use, or a local service that did not start.

The ``recall`` entry point prints it as one line with exit status 2.
"""


class DevtoolsError(Exception):
    """A dev tool cannot do what was asked; the message says why."""
