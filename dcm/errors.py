"""Errors a user can meet and fix; the CLI prints their message as one line instead of a traceback."""


class StageError(RuntimeError):
    """A stage cannot finish; its message names the input or parameter to change. Finished work stays."""


class StoppedEarly(StageError):
    """A training stage stopped at its time limit or a stop request, checkpoint written: run it again."""
