"""The one error of the idioms driver, apart so that every module of it can raise it."""


class IdiomsError(ValueError):
    """A topic cites something that is not there, or a committed file the page reads is malformed: the
    message, one line, names the file and the name or field."""
