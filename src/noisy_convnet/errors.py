"""The one error type for mistakes in a user's input (a config value, a file, a missing data set).

Raised anywhere, caught by the entry point, printed as one line naming the key and what is allowed, and
turned into exit status 2. Any other exception is a bug and keeps its traceback. Kept in its own module
so the math files can raise it without importing OmegaConf or Hydra.
"""


class UserError(ValueError):
    """A bad value in the user's input; its message is ``"<key>: <what is wrong>; <what is allowed>"``."""


class Diverged(RuntimeError):
    """A training whose loss or Q turned NaN or infinite: the run fails (exit 1, no results.json) instead of
    recording numbers that mean nothing."""


def from_worker(e: Exception) -> Exception:
    """A UserError raised in a DataLoader worker reaches the training as a UserError whose message is the
    worker's traceback ("Caught UserError in DataLoader worker process 0. Original Traceback ..."): the
    original one-line error again; any other exception as it is."""
    text = str(e)
    if isinstance(e, UserError) and "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return UserError(last.split("UserError: ", 1)[-1])
    return e
