"""Errors that mean "the user's input is wrong", as opposed to bugs.

The CLI turns an InputError into one line on stderr and exit code 2; anything else is a crash.
"""


class InputError(ValueError):
    """Bad input from the user: the message says what is wrong and how to fix it.

    A ValueError, so code that calls the library can catch it the usual way. Messages name the
    library's arguments; the command line maps them to its flags.
    """


def refuse_model_argument(owner: str, value: object, usage: str) -> None:
    """Objects here take their settings in the constructor and the model in the call that does
    the work; people used to captum pass the model first. Say so instead of failing later."""
    from torch import nn

    if isinstance(value, nn.Module):
        raise TypeError(f"{owner} takes its settings, not the model; use {usage}")


def check_fractions(include_one: bool = True, **values: float) -> None:
    """Raises InputError unless each value lies in (0, 1] (or (0, 1) when `include_one` is False)."""
    for name, value in values.items():
        if not (0.0 < value <= 1.0 if include_one else 0.0 < value < 1.0):
            raise InputError(f"{name} must lie in (0, 1{']' if include_one else ')'}, got {value}")
