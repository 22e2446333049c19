"""How every operator tool ends on an AWS error: one line on stderr, never a traceback.

Credentials and region come first: refused, expired or missing credentials, an unknown
profile and a missing region are said as such, with what to do, by the product's one
classifier (`warehouse.storage.s3.credentials_problem`), and exit with 2, the product's code for
settings; any other AWS error (a missing stack, bucket or log group, a permission, an endpoint
that cannot be reached) exits with 1.
"""

from __future__ import annotations

import sys

from warehouse.storage.s3 import aws_text, credentials_problem

#: Exit code of a tool whose AWS credentials or region are missing or refused.
EXIT_CREDENTIALS = 2
#: Exit code of a tool that AWS answered with any other error.
EXIT_AWS_ERROR = 1
#: The most characters said of any other AWS error.
MESSAGE_CHARS = 1_000


def aws_error_exit(error: BaseException) -> int:
    """Print one line for an AWS error (``error: ...`` on stderr) and return the exit code.

    Parameters
    ----------
    error : BaseException
        What boto3 raised: a ``ClientError`` or a ``BotoCoreError``.

    Returns
    -------
    int
        `EXIT_CREDENTIALS` when the credentials or the region are the problem, else
        `EXIT_AWS_ERROR`.
    """
    problem = credentials_problem(error)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_CREDENTIALS
    print(f"error: {aws_text(error, MESSAGE_CHARS)}", file=sys.stderr)
    return EXIT_AWS_ERROR
