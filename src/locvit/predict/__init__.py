"""See what the models predict: :class:`Predictor` (classification and clips, with the class names that travel with
the weights; Grad-CAM maps by :meth:`Predictor.explain`), :class:`DetectPredictor` / :class:`SegmentPredictor` for
the dense tasks' runs, and the files the ``predict`` commands write (:mod:`locvit.predict.output`)."""
from locvit.predict.core import Prediction, Predictor, expand_inputs
from locvit.predict.dense import Detections, DetectPredictor, Segmentation, SegmentPredictor

__all__ = ["DetectPredictor", "Detections", "Prediction", "Predictor", "SegmentPredictor", "Segmentation",
           "expand_inputs"]
