"""The base class of the project's own errors."""


class BagpiperError(ValueError):
    """Bad input, configuration or files, with a message that names the file, key or field.

    Every error class of the library derives from it, so a command prints its message on
    one line (``bagpiper-<cmd>: <message>``) instead of a traceback, and a caller can catch
    them apart from bugs.
    """
