"""GSM8K accuracy: the final number of each answer against the reference, with a 95% Wilson interval."""

import datasets
import evaluate

from rlrf_hub.evaluation.gsm8k import extract_answer
from rlrf_hub.evaluation.stats import wilson_interval
from rlrf_hub.feedback.verifier import numbers_equal, reference_number

_DESCRIPTION = """
Accuracy of math word-problem answers, GSM8K style. The final number of each prediction is read by rule (a
`#### N` line, the last `\\boxed{N}`, the number after the last "the answer is", else the last number), with
thousands separators, currency signs, units, percent signs and trailing punctuation removed, and compared
with the reference as an exact fraction. A reference is either a bare number or a solution ending in `#### N`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): model answers, free text.
    references (`list` of `str`): reference numbers, or solutions ending with a `#### N` line.
    confidence (`float`, default 0.95): level of the Wilson interval.
Returns:
    accuracy (`float`): fraction of predictions whose final number equals the reference, in [0, 1].
    ci_low, ci_high (`float`): the Wilson interval of the accuracy, in [0, 1].
    n (`int`): number of predictions.
    extracted (`list` of `str` or None): the final number read from each prediction.
Examples:
    >>> metric = evaluate.load(rlrf_hub.metrics.path("gsm8k_accuracy"))
    >>> metric.compute(predictions=["So the answer is $1,200."], references=["... #### 1200"])["accuracy"]
    1.0
"""

_CITATION = """
@article{cobbe2021gsm8k,
  title={Training Verifiers to Solve Math Word Problems},
  author={Cobbe, Karl and Kosaraju, Vineet and Bavarian, Mohammad and others},
  journal={arXiv preprint arXiv:2110.14168},
  year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Gsm8kAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, confidence=0.95):
        extracted, correct = [], []
        for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            expected = reference_number(reference)
            if expected is None:
                raise ValueError(f"references[{index}] states no final number: {reference!r:.80}")
            given = extract_answer(prediction)
            extracted.append(given)
            correct.append(given is not None and numbers_equal(given, expected))
        if not correct:
            raise ValueError("no predictions to score")
        low, high = wilson_interval(sum(correct), len(correct), confidence)
        return {
            "accuracy": sum(correct) / len(correct),
            "ci_low": low,
            "ci_high": high,
            "n": len(correct),
            "extracted": extracted,
        }
