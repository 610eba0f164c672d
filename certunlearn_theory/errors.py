"""Exceptions raised by the accountant. All input errors are ``ValueError`` subclasses."""


class InvalidParameterError(ValueError):
    """A parameter is of the wrong type or outside its allowed range; the message names both."""


class UnreachableTargetError(ValueError):
    """No setting of the free parameter reaches the requested guarantee.

    ``best`` holds the best value that is achievable (for instance the floor of epsilon or delta
    over all step counts), so callers can report it.
    """

    def __init__(self, message: str, best=None):
        super().__init__(message)
        self.best = best


class PrecisionError(ArithmeticError):
    """Evaluations at two working precisions disagree: the result cannot be certified."""
