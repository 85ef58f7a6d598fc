"""Errors whose message is the reply a user reads."""


class UserError(Exception):
    """Something the user can fix or should know; the message is the reply."""
