"""Train stage: distributed training of mass networks with Ray Train, and model artifacts.

* :func:`train_model` -> :class:`TrainResult` (:mod:`galpipe.train.trainer`)
* :func:`load_model` -> :class:`TrainedModel` with ``preprocess`` and ``predict``
  (:mod:`galpipe.train.artifact`)
* :func:`galpipe.train.loop.train_loop_per_worker`: the per-worker loop
"""

from galpipe.train.artifact import TrainedModel, load_model, model_path
from galpipe.train.trainer import TrainResult, train_model

__all__ = ["TrainResult", "TrainedModel", "load_model", "model_path", "train_model"]
