"""The discretae command line (Typer). Each command lives in its own module."""
