"""Errors that mean "the user's settings are wrong", not "the code is wrong": the CLI prints them as one line."""


class SettingsError(ValueError):
    """An invalid or inconsistent setting (a step size, a batch size, a parameter group, a timestep grid...)."""
