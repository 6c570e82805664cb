"""One module per ``mrq`` subcommand. Each defines ``register(subparsers)``; the CLI discovers
them, so adding a command never touches another command's file."""
