"""The one exception type that means "the user's input is wrong".

The ``bench`` command turns a ``BenchError`` into a single line on stderr and exit code 2, so its
message must stand alone: name the file, the key or the value, and what would be accepted.
Anything else that escapes is a bug in segbench and keeps its traceback.
"""


class BenchError(Exception):
    """Bad input (a recipe, a data folder, a flag) reported as one line and exit code 2."""
