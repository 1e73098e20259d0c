"""One module per `kaizen` subcommand that belongs to no single package (init, broker, up, ...).
Each has HELP, EXAMPLE, add_arguments(parser) and run(args, cfg) -> int; see kaizenlm/cli.py."""
