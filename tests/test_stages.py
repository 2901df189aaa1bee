"""What a training trusts of the estimator that asks for it (factory.Trainers.fit) and of the files it
resumes from: a user's estimator calling fit wrongly is one line naming q._target_ before any training, a
noise layer's key covers every attribute that decides it, and a checkpoint is read without running code."""

import pickle
import sys

import numpy as np
import pytest
import torch

from noisy_convnet.errors import UserError
from noisy_convnet.estimators import Fitted, QEstimator
from noisy_convnet.fitting import unreadable
from noisy_convnet.layers import FixedNoiseLayer, NoiseLayer
from noisy_convnet.stages import layer_inputs
from noisy_convnet.train import run


class PlainQ(FixedNoiseLayer):
    """A user's layer that keeps its Q in a plain tensor attribute, not a buffer."""

    def __init__(self, q):
        super().__init__(np.eye(len(q)))
        self.mine = torch.as_tensor(q, dtype=torch.float32)

    def q(self):
        return self.mine


def test_a_plain_tensor_attribute_of_a_layer_is_part_of_its_stage_key():
    a, b = PlainQ(np.eye(3)), PlainQ(np.full((3, 3), 1 / 3))
    assert layer_inputs(a) != layer_inputs(b) and layer_inputs(a) == layer_inputs(PlainQ(np.eye(3)))


def test_a_layer_attribute_that_cannot_be_hashed_is_refused():
    layer = NoiseLayer(3)
    layer.hook = print
    with pytest.raises(UserError, match="^q._target_: .*attribute 'hook' is a builtin_function_or_method"):
        layer_inputs(layer)


class Evil:
    def __reduce__(self):
        return (open, (str(MARK), "w"))


MARK = None


def test_a_checkpoint_that_would_run_code_is_unreadable_and_never_run(tmp_path):
    global MARK
    MARK = tmp_path / "ran"
    path = tmp_path / "last.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}))
    assert unreadable(path) and not MARK.exists()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, path)  # a checkpoint of tensors and values
    assert not unreadable(path)


class Misuse(QEstimator):
    """A user's estimator that calls trainers.fit as its ``how`` says."""

    name = "misuse"

    def __init__(self, how: str):
        self.how = how

    def fit(self, noisy, train, val, trainers):
        k = noisy.num_classes
        if self.how == "outputs":
            return Fitted(trainers.fit(NoiseLayer(k), train, val, predict=train, outputs=("feature",)), None)
        if self.how == "stage":
            return Fitted(trainers.fit(NoiseLayer(k), train, val, stage="../../x"), None)
        if self.how == "init":
            first = trainers.fit(NoiseLayer(k), train, val)
            return Fitted(trainers.fit(NoiseLayer(k + 1), train, val, init=first), None)
        if self.how == "fields":
            return Fitted(trainers.fit(NoiseLayer(k), train, val), None, {"where": object()})
        raise AssertionError(self.how)


sys.modules.setdefault("test_stages", sys.modules[__name__])


@pytest.mark.parametrize(
    "how, message, trainings",
    [
        ("outputs", r"calls trainers.fit\(outputs=...\): unknown \['feature'\]", 0),
        ("stage", r"calls trainers.fit\(stage='../../x'\): a stage name is", 0),
        ("init", r"calls trainers.fit\(init=...\) with a training whose net .* has other shapes", 1),
        ("fields", r"fit\(\) returned fields JSON cannot hold", 1),
    ],
)
def test_a_users_estimator_misusing_fit_is_one_line_naming_its_target(make_cfg, tmp_path, how, message, trainings):
    """Before any training where the call says it all; a warm start of another shape after the training it
    starts from; fields JSON cannot write before the record (nothing written)."""
    cfg = make_cfg("q=custom", "q._target_=test_stages.Misuse", f"+q.how={how}")
    with pytest.raises(UserError, match=rf"^q._target_: 'test_stages.Misuse' {message}"):
        run(cfg)
    assert len(list((tmp_path / "run" / "checkpoints").glob("training*"))) == trainings
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "x").exists()
