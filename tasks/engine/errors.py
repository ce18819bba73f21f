"""How a training run ends other than by finishing (light: the command line catches these)."""

EXIT_INTERRUPTED = 3
"""The exit code of a run stopped by SIGTERM or SIGINT after writing its checkpoint."""


class Interrupted(Exception):
    """A signal stopped the run at a step boundary, after its checkpoint was written."""


class TrainingFailed(Exception):
    """The run cannot go on (e.g. a non-finite loss); the message names the step and the last good checkpoint."""
