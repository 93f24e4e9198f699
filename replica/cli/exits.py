"""The exit codes of every ``replica`` command (README, "Command line")."""

__all__ = ["EXIT_FATAL", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK = 0  # done, or stopped by SIGTERM/SIGINT
EXIT_FATAL = 1  # the server refused a shape, or another fatal error
EXIT_USAGE = 2  # a usage or config error: nothing was sent
