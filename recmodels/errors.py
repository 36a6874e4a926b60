"""The one exception type that means "the user gave us bad input".

The CLI turns an ``InputError`` into one line on stderr and exit code 2 (no traceback);
anything else that escapes is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input: a malformed file, an unknown name, an impossible value.

    The message must say what is wrong and how to fix it, in one line.
    """
