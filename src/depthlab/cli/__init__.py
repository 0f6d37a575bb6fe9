"""The `depthlab` command line: one module per group of subcommands, each with a `register(subparsers)`."""
