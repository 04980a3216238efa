"""FactScore from per-fact support decisions, with the length-penalised variant (gamma = 10)."""

import datasets
import evaluate

from rlrf_hub.evaluation.factscore.scoring import GAMMA, ResponseFacts, summarize

_DESCRIPTION = """
FactScore (Min et al., 2023): for each answered response, the fraction of its atomic facts that the knowledge
source supports; the mean over responses. Responses that abstain are counted but not scored, nor are responses
without any fact. The length-penalised variant multiplies a response's score by exp(1 - gamma / n) when it has
n < gamma facts. Deciding support is up to the caller (a judge and a knowledge source, or human labels); this
module aggregates the decisions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `bool`): for each response, one decision per atomic fact (True = supported).
    abstained (`list` of `bool`, optional): which responses abstained (their decisions are ignored).
    gamma (`float`, default 10): length-penalty parameter; 0 disables the penalty.
Returns:
    factscore (`float` or None): mean supported fraction over scored responses, in [0, 1].
    factscore_length_penalized (`float` or None): the same with the length penalty, in [0, 1].
    num_scored, num_abstained, num_without_facts (`int`): how the responses were counted.
    abstention_rate (`float`): abstained / all responses, in [0, 1].
    facts_per_response (`float` or None): mean number of facts of a scored response.
Examples:
    >>> metric = evaluate.load(rlrf_hub.metrics.path("factscore"))
    >>> metric.compute(predictions=[[True, False], []], abstained=[False, True], gamma=0)["factscore"]
    0.5
"""

_CITATION = """
@inproceedings{min2023factscore,
  title={FActScore: Fine-grained Atomic Evaluation of Factual Precision in Long Form Text Generation},
  author={Min, Sewon and Krishna, Kalpesh and Lyu, Xinxi and others},
  booktitle={EMNLP},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FactScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("bool"))}),
        )

    def _compute(self, predictions, abstained=None, gamma=GAMMA):
        abstained = list(abstained) if abstained is not None else [False] * len(predictions)
        if len(abstained) != len(predictions):
            raise ValueError(f"abstained has {len(abstained)} entries for {len(predictions)} predictions")
        responses = [
            ResponseFacts(str(index), bool(skip), [bool(d) for d in decisions])
            for index, (decisions, skip) in enumerate(zip(predictions, abstained, strict=True))
        ]
        summary = summarize(responses, gamma)

        def fraction(value):
            return None if value is None else value / 100

        return {
            "factscore": fraction(summary.factscore),
            "factscore_length_penalized": fraction(summary.factscore_length_penalized),
            "num_scored": summary.num_scored,
            "num_abstained": summary.num_abstained,
            "num_without_facts": summary.num_without_facts,
            "abstention_rate": fraction(summary.abstention_rate),
            "facts_per_response": summary.facts_per_response,
        }
