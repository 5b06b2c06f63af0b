"""The exception types that mean "the user's input (or the user's machine) stops this command".

The ``bench`` command turns a ``BenchError`` into a single line on stderr and exit code 2, so its
message must stand alone: name the file, the key or the value, and what would be accepted.
Anything else that escapes is a bug in segbench and keeps its traceback.
"""


class BenchError(Exception):
    """Bad input (a recipe, a data folder, a flag) reported as one line and exit code 2."""


class DiskFull(BenchError):
    """The results disk has no room for the next file; what was written so far is kept and resumes.

    Separate from other errors because nothing can go on until space is freed: ``bench tune`` stops
    its workers and queues the trial again, where any other failing trial is recorded and skipped.
    """
