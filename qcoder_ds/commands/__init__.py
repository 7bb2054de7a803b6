"""One module per `qcoder` subcommand group; each exposes ``register(subparsers)``.

A module's ``register`` adds its subparser(s) and sets ``func`` (taking the parsed args,
returning an exit code) with ``set_defaults``. Add a module name to COMMANDS to ship it.
"""

COMMANDS = ["models", "export", "ask", "bench", "explain", "lessons", "grade", "eval", "trace"]
