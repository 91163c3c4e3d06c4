"""The `wmpo` commands of the top layer, registered under the `wmpo.commands` entry point.

name -> (module, one-line help), as in each package's `commands.py`; kept free of imports so that
`wmpo --help` lists every command without loading any.
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("wmpo_loop.main_job", "the whole lifelong loop on one machine (the main job)"),
}
