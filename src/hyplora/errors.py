"""The one exception type for bad input (the CLI prints it as a single line), and the one-line error text."""


class InputError(ValueError):
    """Malformed or missing files, unknown names, incompatible options: say which file, record or option."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, else its type name (for one-line `InputError`s)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
