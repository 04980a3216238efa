"""The stages of RLRF, one module each, in the order a run makes them:

    prompts -> candidates -> refinements -> feedback -> pairs -> adapter (train) -> evaluation

The prompts are made once; the other stages once per iteration, with the policy M_t. Every stage module has the
interface that `base` describes, so adding a stage is writing a module and putting it in `ITERATION_STAGES`.
"""

from . import candidates, evaluate, feedback, pairs, prompts, refinements, train

ITERATION_STAGES = (candidates, refinements, feedback, pairs, train)

__all__ = ["ITERATION_STAGES", "candidates", "evaluate", "feedback", "pairs", "prompts", "refinements", "train"]
