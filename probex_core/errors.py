"""The one exception a user sees as a single line: `probex: error: <message>`, exit code 2."""


class UserError(Exception):
    """Bad input from the user (a path, a hub, a name): says what and why, never a traceback."""
