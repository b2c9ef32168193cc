"""AudioSet-convention mean average precision as an `evaluate` metric module.

`evaluate.load("<name>")` needs the Hub, which is not always reachable; this module loads from a
local path instead: ``evaluate.load(hf_audiorep.evaluation.MAP_METRIC_PATH)``.
"""

import datasets
import evaluate
from sklearn.metrics import average_precision_score

_DESCRIPTION = (
    "Macro-averaged average precision over the classes that have at least one positive "
    "(the AudioSet tagging convention). Predictions are per-class scores; references are multi-hot."
)
_KWARGS = """
Args:
    predictions (list of list of float): per-class scores (logits or probabilities) for each clip.
    references (list of list of int): multi-hot targets for each clip.
Returns:
    mAP (float), num_classes_evaluated (int), num_clips (int).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class AudiosetMap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            ),
        )

    def _compute(self, predictions, references):
        import numpy

        scores = numpy.asarray(predictions, dtype=numpy.float64)
        targets = numpy.asarray(references) >= 1
        valid = targets.sum(axis=0) > 0
        if not valid.any():
            raise ValueError("no class has a positive example: mAP is undefined")
        aps = average_precision_score(targets[:, valid], scores[:, valid], average=None)
        return {
            "mAP": float(numpy.mean(aps)),
            "num_classes_evaluated": int(valid.sum()),
            "num_clips": int(len(scores)),
        }
