"""The command line: ``main`` (parser, dispatch), ``args`` (registry), one module per command group."""
