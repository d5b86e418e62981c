"""The one error type the runtime raises.

Every failure a user can cause (a bad file, a wrong model, an impossible
option) is a :class:`SpineDetError` whose message is one line that names the
file and the problem.  Command-line tools print that line and exit non-zero;
programs embedding the runtime catch this one type.
"""


class SpineDetError(Exception):
    """A problem with the input, the model or the options, stated in one line."""

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        text = " ".join(str(message).split())  # always one line
        super().__init__(f"{self.path}: {text}" if self.path else text)

    def with_path(self, path) -> "SpineDetError":
        """The same error, naming ``path`` if it does not name a file yet."""
        if self.path is not None:
            return self
        return SpineDetError(self.args[0], path=path)
