"""Training any variant on a corpus: settings, the loop, the `workbench train` command."""

from workbench.training.settings import TrainSettings
from workbench.training.trainer import RunResult, learning_rate, train

__all__ = ["RunResult", "TrainSettings", "learning_rate", "train"]
