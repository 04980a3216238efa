"""Deciding that a biography answer declines to answer, by rule.

An abstention ("I could not find information about X", "There is no information on X in the search
results") has no facts to check; FactScore counts it separately instead of scoring it zero, so a model
that abstains on rare entities is neither rewarded nor punished in the average, and the abstention rate is
reported next to it. The answer abstains when it is empty, or when its opening (the first sentence, or the
whole answer when it is short) says that the model has, found or may give no information.
"""

from __future__ import annotations

import re

SHORT_ANSWER_WORDS = 40
_CUES = [
    r"\b(?:i'?m|i am) (?:very |really )?sorry\b",
    r"\bi (?:must |have to )?apologi[sz]e\b",
    r"\bunfortunately\b",
    r"\b(?:could not|couldn'?t|cannot|can'?t|can not|was unable to|am unable to|unable to|not able to)"
    r" (?:find|locate|identify|provide|give|write|offer)\b",
    r"\b(?:do not|don'?t|did not|didn'?t) (?:have|find|know) (?:any |enough |much |specific |reliable )?"
    r"(?:information|details|data|knowledge|records?)\b",
    r"\bno (?:reliable |specific |relevant |available |public |further )?(?:information|details|data|records?)"
    r" (?:is |are )?(?:available|about|on|regarding|for|in)\b",
    r"\bnot (?:mentioned|found|included|covered) in (?:any of )?the (?:provided |given )?"
    r"(?:search results?|sources?)\b",
    r"\b(?:search results?|sources?) (?:provided )?(?:is|are|does|do) not (?:about|contain|mention|provide|include)\b",
    r"\bnot (?:familiar|aware) (?:with|of)\b",
    r"\bnot enough (?:information|details|context)\b",
]
_CUE = re.compile("|".join(_CUES), re.IGNORECASE)
_FIRST_SENTENCE = re.compile(r"^.*?(?:[.!?](?=\s|$)|$)", re.DOTALL)


def is_abstention(response: str | None) -> bool:
    text = " ".join((response or "").replace("’", "'").split())
    if not text:
        return True
    opening = text if len(text.split()) <= SHORT_ANSWER_WORDS else _FIRST_SENTENCE.match(text).group(0)
    return _CUE.search(opening) is not None
