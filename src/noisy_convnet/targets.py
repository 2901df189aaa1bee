"""Building a config node's ``_target_`` (``build``, ``built``), and the one line a user's mistake in it
becomes: an argument the object does not take, its own refusal, a ``_target_`` that names nothing or whose
module fails to import (its own error and where, which Hydra's hint would hide), a node inside the node
named by its own key. ``config.check`` uses these on every node it builds; ``train`` builds the network.
"""

from __future__ import annotations

import re
import sys
import traceback

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import UserError


def build(node: DictConfig, key: str, **kwargs):
    """instantiate(node): a UserError raised by the object's own checks passes through; a missing or
    unexpected argument, or a ``_target_`` that cannot be imported, becomes one naming ``key``."""
    if node is None or "_target_" not in node:
        raise UserError(f"{key}: needs a _target_ (choose one of the options: {key}=...)")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        raise build_error(node, key, e) from None


def build_error(node: DictConfig, key: str, e: InstantiationException) -> UserError:
    if isinstance(e.__cause__, UserError):
        return e.__cause__
    cause = e.__cause__  # a constructor refusing its arguments (e.g. a network too deep for the images)
    located = unlocated(e)
    if located:  # Hydra names the target and, on its last line, the node that holds it (maybe one inside this one)
        where = re.search(r"^full_key: (.+)$", str(e), re.MULTILINE)
        return import_error(f"{where.group(1) if where else key}._target_", located.group(1), cause)
    why = cause if isinstance(cause, (TypeError, ValueError, RuntimeError)) else str(e).splitlines()[0]
    return UserError(f"{key}: cannot build {node.get('_target_')} ({why})")


def unlocated(e: InstantiationException) -> re.Match | None:
    """Hydra's "Error locating target '<target>', set env var HYDRA_FULL_ERROR=1 ...": a _target_ not imported."""
    return re.match(r"Error locating target '(.*)', set env var HYDRA_FULL_ERROR", str(e))


def import_error(key: str, target: str, error: BaseException | None) -> UserError:
    """A ``_target_`` that could not be imported; ``error``: what Hydra's lookup raised. Either the path names
    nothing ("cannot import", with Hydra's hint), or importing the module it names failed (a user's own file:
    its error and where it was raised, which Hydra's hint would hide)."""
    hint = (str(error).splitlines() or [repr(error)])[-1] if error is not None else "not found"
    inner = error.__cause__ if error is not None else None
    missing = inner is None or (isinstance(inner, ModuleNotFoundError) and inner.name is not None
                                and (target == inner.name or target.startswith(f"{inner.name}.")))
    if missing or (isinstance(inner, AttributeError) and "is an attribute of" in hint):
        return UserError(f"{key}: cannot import '{target}' ({hint})")
    frames = traceback.extract_tb(inner.__traceback__)
    where = "" if isinstance(inner, SyntaxError) or not frames else f" at {frames[-1].filename}:{frames[-1].lineno}"
    return UserError(f"{key}: importing '{target}' failed{where}: {type(inner).__name__}: {inner}")


def built(obj, node: DictConfig, key: str, base: type, method: str):
    """obj, checked to be what ``key`` must build: an instance of a subclass of ``base`` that implements
    ``method`` (a function, a plain class, a class of the other family or the abstract base is refused)."""
    target = node.get("_target_")
    package = sys.modules.get(base.__module__.rpartition(".")[0])  # the public name: a package's re-export
    what = f"{package.__name__ if getattr(package, base.__name__, None) is base else base.__module__}.{base.__name__}"
    if not isinstance(obj, base):
        kind = "a class" if isinstance(obj, type) else type(obj).__name__
        raise UserError(f"{key}._target_: '{target}' builds {kind}, not a {what}; name a subclass of it")
    if getattr(type(obj), method) is getattr(base, method):
        raise UserError(f"{key}._target_: '{target}' does not implement {method}(); name a subclass of {what} "
                        f"that does")
    return obj


def takes(node: DictConfig, **kwargs) -> bool:
    """Whether node's ``_target_`` takes its keys and kwargs by its signature (True where it has none to read)."""
    import inspect

    from hydra._internal.utils import _locate  # hydra.utils.get_object's lookup, without its error log

    try:
        signature = inspect.signature(_locate(node._target_))
    except (TypeError, ValueError):
        return True
    keys = {str(k): None for k in node if not str(k).startswith("_")}
    try:
        signature.bind(*node.get("_args_", ()), **{**keys, **kwargs})  # as Hydra calls it: kwargs win
    except TypeError:
        return False
    return True


def check_targets(cfg: DictConfig, keys: list[str]) -> None:
    """The ``_target_`` of nodes the run builds itself (the trainer, the loggers) can be imported."""
    from hydra._internal.utils import _locate

    for key in keys:
        target = OmegaConf.select(cfg, f"{key}._target_", default=None)
        if isinstance(target, str):
            try:
                _locate(target)
            except Exception as e:  # noqa: BLE001 (whatever importing it raised: import_error says which)
                raise import_error(f"{key}._target_", target, e) from None
