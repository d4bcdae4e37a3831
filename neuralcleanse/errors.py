"""Errors that mean "the user's input is wrong", as opposed to bugs.

The CLI turns an InputError into one line on stderr and exit code 2; anything else is a crash.
"""


class InputError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""
