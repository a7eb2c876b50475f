"""The command line: ``avi demo | fit | infer | check | compare | reproduce | bench``."""

from avi.cli.main import main

__all__ = ["main"]
