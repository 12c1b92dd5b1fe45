"""The one exception type for mistakes a user can make (bad input, missing data).

The CLI prints its message as a single line and exits with code 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message must name the fix."""

    exit_code = 2
