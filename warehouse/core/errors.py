"""The base of errors whose message is meant for the operator."""


class ExpectedError(Exception):
    """An error that stops a run with a message for the operator: logged without a traceback.

    Configuration and storage errors derive from it; anything else reaching a node's boundary
    is a bug and is logged with its traceback.
    """
