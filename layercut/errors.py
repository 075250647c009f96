"""The one exception layercut raises on bad input: a single line that names the fix."""


class LayercutError(Exception):
    """Bad input or an unmet precondition; the CLI prints the message and exits with code 2."""
