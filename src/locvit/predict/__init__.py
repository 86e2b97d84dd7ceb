"""See what the models predict: :class:`Predictor` (classification; the class names that travel with the weights),
the files ``locvit predict --output`` writes (:mod:`locvit.predict.output`)."""
from locvit.predict.core import Prediction, Predictor, expand_inputs, read_run

__all__ = ["Prediction", "Predictor", "expand_inputs", "read_run"]
