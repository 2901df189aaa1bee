"""How Q is obtained: one ``QEstimator`` per ``conf/q/*.yaml`` (built with ``_target_``).

One module per method or family: ``base`` (the interface below and the families several share), ``paper``
(none, fixed, learned), ``anchor`` (anchor points, Dual-T), ``confident``, ``volmin``, ``trevision``, ``hoc``
(with its numpy core ``hoc_core``). The YAML files name each class by this package's public name
(``noisy_convnet.estimators.AnchorQ``), not by its module: a class moved between modules keeps its name in
every config and every finished cell's identity (a sweep finished before the package existed stays
finished: tests/test_identity.py).

The interface, all an estimator of one's own needs (a subclass, and ``q._target_`` naming it):
  name                  -- the record's ``q`` (results.json, the report, W&B run names)
  label                 -- how figures name it
  estimated             -- True when Q is estimated from the data (drawn beside Q* in Fig. 2c)
  outputs(noisy)        -- how many outputs the base net has: Q*'s size (K + 1 with outlier noise) by default
  needs_validation()    -- the key that needs a validation slice, or None
  check(noise_model)    -- refuse a noise model it cannot handle (UserError), before any data is loaded
  fit(noisy, train, val, trainers) -> Fitted
                        -- trains through ``trainers.fit(layer, train, val, ...)`` (factory.py: warm starts,
                           p(noisy | x) and features on given images, shared stages) as often as it needs,
                           knows the run through ``trainers.context`` (seed, epoch budget, early stopping,
                           artifacts folder), and returns the training to test, the Q it ended with and its
                           own record fields.
The constructor takes the estimator's keys from its YAML file (their one home) and checks them: a bad value
is a ``UserError`` naming ``q.<key>``, raised when ``config.validate`` builds it, before any data is loaded.

  none    -- no noise layer: cross entropy on the noisy labels (the paper's baseline).
  fixed   -- Q = Q*, frozen (the paper's upper reference); Q* must be invertible (paper, after Eq. 7).
  learned -- Q learned with the network (paper Sec. 3) with the project's recipe (layers.py). A list in a
             selectable key means one training per value (per combination), the one with the lowest NLL on
             the noisy validation slice kept; the test set plays no part.
The field's estimators, as published (flip noise and label files; they refuse outlier noise):
  anchor    -- forward correction with anchor points (Patrini et al. 2017)
  dualt     -- Dual-T (Yao et al. 2020)
  confident -- cleanlab's confident joint (Northcutt et al. 2021), an optional extra (AGPL-3.0)
  volmin    -- VolMinNet (Li et al. 2021)
  trevision -- T-Revision (Xia et al. 2019)
  hoc       -- HOC (Zhu et al. 2021)
Those that train through an estimated T (anchor, dualt, confident, hoc, trevision) take ``start``:
``estimated`` (their method) or ``true``, the oracle start: their training stages run through Q* instead of
their estimate, which separates the estimation error from what the training does (``q=anchor q.start=true``
is forward correction through Q*, the same run as ``q=fixed``). Their record name gains "_oracle".
Each training names its role ("plain", "reweight", "revision"), so a peer's protocol (the run's
``protocol.<role>``) can give it its own epochs, optimiser and selection rule (protocol.Spec.settings).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Estimator:
    """A built-in estimator: its name (the record's ``q``, ``conf/q/<name>.yaml``), its class here
    (``module.Class``) and its colour in every figure (the early-stopped variant dashed or hatched)."""

    name: str
    cls: str
    colour: str


# The one list of the built-in estimators, in the order tables and figures show them: the report's order
# and colours, the estimators_* presets' sweeps (``${estimators:}``) and this package's exports follow it;
# labels are the classes' own (``label``, in each record). An estimator of one's own is not listed: the
# report shows it after these, by its record's label, in a colour of plots.OTHERS.
ESTIMATORS = (
    Estimator("none", "paper.NoQ", "tab:red"),
    Estimator("fixed", "paper.FixedQ", "tab:blue"),
    Estimator("learned", "paper.LearnedQ", "tab:green"),
    Estimator("anchor", "anchor.AnchorQ", "tab:purple"),
    Estimator("dualt", "anchor.DualTQ", "tab:orange"),
    Estimator("confident", "confident.ConfidentQ", "tab:brown"),
    Estimator("volmin", "volmin.VolMinQ", "tab:pink"),
    Estimator("trevision", "trevision.TRevisionQ", "tab:olive"),
    Estimator("hoc", "hoc.HocQ", "tab:cyan"),
)
NAMES = tuple(e.name for e in ESTIMATORS)

# Imported when first used (PEP 562), so that the list above costs nothing to read (config.py, the report):
# the classes import torch and Lightning.
_EXPORTS = {
    **{e.cls.split(".")[1]: e.cls.split(".")[0] for e in ESTIMATORS},
    "PLAIN": "base", "Fitted": "base", "QEstimator": "base",
    "anchor_indices": "anchor", "anchor_t": "anchor", "count_t": "anchor", "confident_q": "confident",
}
__all__ = ["ESTIMATORS", "NAMES", "Estimator", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
