"""The ``mrq`` console script and ``python -m mrq``: a process that *is* mrq.

The interrupt handlers go in before anything heavy is imported (numpy, numba, the commands take
most of a second), so Ctrl-C or ``kill`` during start-up ends the run as cleanly as later on:
``interrupted`` and exit code 130, never a KeyboardInterrupt traceback. ``mrq.cli.main`` itself
installs only the SIGTERM handler, because it also runs inside other programs (tests,
notebooks) whose Ctrl-C is theirs."""
from __future__ import annotations


def main() -> int:
    from mrq.interrupts import install_process_handlers
    install_process_handlers()
    from mrq.cli import main as cli_main
    return cli_main()
