"""The `wmpo` commands this package provides, registered under the `wmpo.commands` entry point.

name -> (module, one-line help); the module defines `add_arguments(parser, command)` and
`run(args)`. Kept free of imports so that `wmpo --help` lists every command without loading any.
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "store": ("wmpo_core.store_cli", "inspect, verify, label, delete, import and export episode stores"),
}
