"""The one exception type for bad input: the CLI prints it as a single line."""


class InputError(ValueError):
    """Malformed or missing files, unknown names, incompatible options: say which file, record or option."""
