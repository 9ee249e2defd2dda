from ._C import Error


class InvalidArgument(Error, ValueError):
    """Bad input, refused before any byte moves. Both an hcomm.Error and a ValueError."""
