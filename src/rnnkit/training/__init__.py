"""Training, one concept a module: the loop (:mod:`.trainer`), the step (:mod:`.steps`), the
optimizer and schedule (:mod:`.optim`), the weight average (:mod:`.average`), the records
(:mod:`.records`), the data (:mod:`.corpus`), stopping (:mod:`.stopping`), validation
(:mod:`.validation`), the device (:mod:`.device`) and the callbacks (:mod:`.callbacks`)."""

from rnnkit.training.callbacks import Callback
from rnnkit.training.records import BestWeights, EpochStats, EvalPoint, TrainingState
from rnnkit.training.trainer import Trainer

__all__ = ["BestWeights", "Callback", "EpochStats", "EvalPoint", "Trainer", "TrainingState"]
