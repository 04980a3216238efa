from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrf_hub.ids import prompt_id, response_id
from rlrf_hub.reward import ranking_key
from rlrf_hub.schemas import PAIRS, to_dataset
from rlrf_hub.stages.pairs import build_pairs, is_positive, pair_stats, select_for_refinement

REFLECTION = "REFLECT: improve the answer below using the feedback."
REWARDS = st.sampled_from([-1.5, 0.0, 0.25, 1.0, 2.0])
RATINGS = st.lists(st.sampled_from([-1, 0, 1]), min_size=1, max_size=3)
SETTINGS = settings(max_examples=60, deadline=None)


def response_row(pid: str, text: str, origin: str, index: int) -> dict:
    asked = text if origin == "candidate" else f"{REFLECTION}\nQuestion: {text}"
    return {
        "prompt_id": pid,
        "response_id": response_id(pid, 0, origin, index),
        "iteration": 0,
        "origin": origin,
        "sample_index": index,
        "parent_id": None if origin == "candidate" else response_id(pid, 0, "candidate", 0),
        "task": "general",
        "prompt": text,
        "messages": [{"role": "user", "content": asked}],
        "response": f"answer {origin} {index} to {text}",
        "num_tokens": 5,
        "finish_reason": "stop",
        "policy": "test",
    }


def feedback_row(response: dict, ratings: list[int] | None, reward: float | None) -> dict:
    parsed = ratings is not None
    ratings = ratings or []
    return {
        "prompt_id": response["prompt_id"],
        "response_id": response["response_id"],
        "iteration": 0,
        "origin": response["origin"],
        "aspects": ["Readability"] * len(ratings),
        "ratings": ratings,
        "mean_rating": sum(ratings) / len(ratings) if parsed else None,
        "is_positive": parsed and all(r == 1 for r in ratings),
        "parse_status": "strict" if parsed else "failed",
        "reward": reward,
    }


@st.composite
def runs(draw, rewards: bool | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Prompts, responses and feedback of one iteration: random ratings, failed parses, rewards and origins."""
    with_rewards = draw(st.booleans()) if rewards is None else rewards
    prompts, responses, feedback = {}, [], []
    for p in range(draw(st.integers(1, 4))):
        text = f"question number {p}"
        pid = prompt_id(text)
        prompts[pid] = {"prompt_id": pid, "prompt": text, "task": "general", "reference": "", "source": "test"}
        counts = {"candidate": draw(st.integers(1, 5)), "refinement": draw(st.integers(0, 6))}
        for origin, count in counts.items():
            for index in range(count):
                row = response_row(pid, text, origin, index)
                ratings = draw(st.one_of(st.none(), RATINGS, st.lists(st.just(1), min_size=1, max_size=3)))
                responses.append(row)
                feedback.append(feedback_row(row, ratings, draw(REWARDS) if with_rewards else None))
    return prompts, responses, feedback


def by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for row in rows:
        groups[row["prompt_id"]].append(row)
    return groups


def best_positive_ids(rows: list[dict], top_k: int) -> list[str]:
    positives = sorted((r for r in rows if is_positive(r)), key=ranking_key, reverse=True)
    return [r["response_id"] for r in positives[:top_k]]


@SETTINGS
@given(run=runs(), top_k=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_rlrf_pairs_best_positives_with_distinct_random_negatives(run, top_k, seed):
    prompts, responses, feedback = run
    pairs = build_pairs("rlrf", prompts, responses, feedback, top_k=top_k, seed=seed, iteration=1)
    fb = {row["response_id"]: row for row in feedback}
    text = {row["response_id"]: row["response"] for row in responses}
    pairs_of = by_prompt(pairs)
    for pid, rows in by_prompt(feedback).items():
        positives = [r for r in rows if is_positive(r)]
        negatives = [r for r in rows if not is_positive(r)]
        got = pairs_of.get(pid, [])
        if not positives or not negatives:
            assert got == []
            continue
        assert [p["chosen_id"] for p in got] == best_positive_ids(rows, top_k)
        assert len(got) == min(top_k, len(positives))
        rejected = [p["rejected_id"] for p in got]
        if len(negatives) >= len(got):
            assert len(set(rejected)) == len(rejected)
        else:
            assert set(rejected) == {r["response_id"] for r in negatives}
    for pair in pairs:
        chosen, rejected = fb[pair["chosen_id"]], fb[pair["rejected_id"]]
        assert is_positive(chosen) and all(r == 1 for r in chosen["ratings"])
        assert not is_positive(rejected)
        assert chosen["prompt_id"] == rejected["prompt_id"] == pair["prompt_id"]
        assert pair["chosen"] == [{"role": "assistant", "content": text[pair["chosen_id"]]}]
        assert pair["rejected"] == [{"role": "assistant", "content": text[pair["rejected_id"]]}]
        assert pair["chosen_ratings"] == chosen["ratings"] and pair["rejected_ratings"] == rejected["ratings"]
        assert pair["chosen_reward"] == chosen["reward"] and pair["rejected_reward"] == rejected["reward"]
        assert pair["chosen_origin"] == chosen["origin"] and pair["rejected_origin"] == rejected["origin"]
        assert pair["pairing"] == "rlrf" and pair["iteration"] == 1


@SETTINGS
@given(run=runs(), rule=st.sampled_from(["rlrf", "rs", "reward_only"]))
def test_prompt_is_the_original_question_never_the_reflection_prompt(run, rule):
    prompts, responses, feedback = run
    if rule == "reward_only":
        feedback = [{**row, "reward": float(i % 3)} for i, row in enumerate(feedback)]
    for pair in build_pairs(rule, prompts, responses, feedback, top_k=3, seed=0, iteration=0):
        assert pair["prompt"] == [{"role": "user", "content": prompts[pair["prompt_id"]]["prompt"]}]
        assert REFLECTION not in pair["prompt"][0]["content"]


@SETTINGS
@given(run=runs(), top_k=st.integers(1, 3), seed=st.integers(0, 1000), data=st.data())
def test_same_seed_gives_same_pairs_whatever_the_row_order(run, top_k, seed, data):
    prompts, responses, feedback = run
    rule = data.draw(st.sampled_from(["rlrf", "rs"]))
    shuffled_feedback = data.draw(st.permutations(feedback))
    shuffled_responses = data.draw(st.permutations(responses))
    first = build_pairs(rule, prompts, responses, feedback, top_k, seed, iteration=0)
    second = build_pairs(rule, prompts, shuffled_responses, shuffled_feedback, top_k, seed, iteration=0)
    assert first == second


def _one_positive_many_negatives():
    text = "pick a negative"
    pid = prompt_id(text)
    responses = [response_row(pid, text, "candidate", i) for i in range(12)]
    feedback = [feedback_row(r, [1] if i == 0 else [-1], None) for i, r in enumerate(responses)]
    return {pid: {"prompt_id": pid, "prompt": text}}, responses, feedback


def test_different_seeds_can_pick_different_negatives():
    prompts, responses, feedback = _one_positive_many_negatives()
    rejected = {
        build_pairs("rlrf", prompts, responses, feedback, top_k=1, seed=seed, iteration=0)[0]["rejected_id"]
        for seed in range(20)
    }
    assert len(rejected) > 1


def test_negatives_are_drawn_without_replacement_then_reused_evenly():
    text = "many positives"
    pid = prompt_id(text)
    responses = [response_row(pid, text, "candidate", i) for i in range(4)]
    responses += [response_row(pid, text, "refinement", i) for i in range(6)]
    feedback = [feedback_row(r, [1, 1] if r["origin"] == "candidate" else [1, 0], None) for r in responses]
    prompts = {pid: {"prompt_id": pid, "prompt": text}}
    for seed in range(25):
        pairs = build_pairs("rlrf", prompts, responses, feedback, top_k=4, seed=seed, iteration=0)
        assert len({p["rejected_id"] for p in pairs}) == 4
        kept = responses[:4] + responses[-2:]
        scarce = build_pairs("rlrf", prompts, kept, feedback[:4] + feedback[-2:], top_k=4, seed=seed, iteration=0)
        assert sorted(p["rejected_id"] for p in scarce) == sorted(2 * [r["response_id"] for r in responses[-2:]])


@SETTINGS
@given(run=runs(rewards=True), seed=st.integers(0, 1000))
def test_reward_only_pairs_the_best_candidate_with_another_candidate(run, seed):
    prompts, responses, feedback = run
    pairs = build_pairs("reward_only", prompts, responses, feedback, top_k=2, seed=seed, iteration=0)
    pairs_of = by_prompt(pairs)
    for pid, rows in by_prompt(feedback).items():
        candidates = [r for r in rows if r["origin"] == "candidate"]
        if len(candidates) < 2:
            assert pid not in pairs_of
            continue
        (pair,) = pairs_of[pid]
        assert pair["chosen_reward"] == max(r["reward"] for r in candidates)
        assert pair["rejected_id"] != pair["chosen_id"]
        assert pair["chosen_origin"] == pair["rejected_origin"] == "candidate"
        assert pair["rejected_id"] in {r["response_id"] for r in candidates}


def test_reward_only_without_a_reward_model_names_the_setting():
    prompts, responses, feedback = _one_positive_many_negatives()
    with pytest.raises(ValueError, match="reward_model"):
        build_pairs("reward_only", prompts, responses, feedback, top_k=1, seed=0, iteration=0)


@SETTINGS
@given(run=runs(), top_k=st.integers(1, 4))
def test_rs_rows_are_the_best_positives_without_rejected(run, top_k):
    prompts, responses, feedback = run
    pairs = build_pairs("rs", prompts, responses, feedback, top_k=top_k, seed=0, iteration=2)
    pairs_of = by_prompt(pairs)
    for pid, rows in by_prompt(feedback).items():
        assert [p["chosen_id"] for p in pairs_of.get(pid, [])] == best_positive_ids(rows, top_k)
    positive_ids = {r["response_id"] for r in feedback if is_positive(r)}
    for pair in pairs:
        assert pair["chosen_id"] in positive_ids
        assert pair["rejected"] == [] and pair["rejected_ratings"] == []
        assert pair["rejected_id"] is None and pair["rejected_origin"] is None and pair["rejected_reward"] is None


@settings(max_examples=15, deadline=None)
@given(run=runs(rewards=True), rule=st.sampled_from(["rlrf", "rs", "reward_only"]))
def test_every_rule_gives_valid_pairs_rows(run, rule):
    prompts, responses, feedback = run
    pairs = build_pairs(rule, prompts, responses, feedback, top_k=2, seed=0, iteration=1)
    assert all(set(pair) == set(PAIRS) for pair in pairs)
    dataset = to_dataset("pairs", pairs)
    assert dataset.num_rows == len(pairs)
    assert dataset.to_list() == pairs


def test_unknown_rule_is_refused():
    prompts, responses, feedback = _one_positive_many_negatives()
    with pytest.raises(ValueError, match="pairing"):
        build_pairs("best_of_n", prompts, responses, feedback, top_k=1, seed=0, iteration=0)


def test_pair_stats_counts():
    prompts, responses, feedback = _one_positive_many_negatives()
    pairs = build_pairs("rlrf", prompts, responses, feedback, top_k=2, seed=0, iteration=0)
    stats = pair_stats(pairs, feedback)
    assert stats["prompts"] == stats["prompts_with_positive"] == stats["prompts_paired"] == 1
    assert stats["positives"] == 1 and stats["pairs"] == 1 and stats["responses"] == 12


@SETTINGS
@given(run=runs())
def test_select_for_refinement_picks_the_best_parsed_candidate(run):
    _, _, feedback = run
    for rows in by_prompt(feedback).values():
        picked = select_for_refinement(rows)
        candidates = [r for r in rows if r["origin"] == "candidate" and r["parse_status"] != "failed"]
        if not candidates:
            assert picked is None
            continue
        assert picked == max(candidates, key=ranking_key)["response_id"]
        assert all(ranking_key(r) <= ranking_key(rows_by_id(rows)[picked]) for r in candidates)


def rows_by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["response_id"]: r for r in rows}


def test_select_for_refinement_ignores_better_refinements():
    text = "refine me"
    pid = prompt_id(text)
    ratings = {("candidate", 0): [0, -1], ("candidate", 1): [1, 0], ("refinement", 0): [1, 1]}
    rows = [feedback_row(response_row(pid, text, o, i), r, None) for (o, i), r in ratings.items()]
    assert select_for_refinement(rows) == response_id(pid, 0, "candidate", 1)
    rewarded = [{**row, "reward": reward} for row, reward in zip(rows, [3.0, 1.0, 9.0], strict=True)]
    assert select_for_refinement(rewarded) == response_id(pid, 0, "candidate", 0)
    assert select_for_refinement(rows[2:]) is None


def _ranked(*specs) -> list[str]:
    """Response ids of hand-made rows, best first; a spec is (origin, index, ratings or None, reward)."""
    rows = [feedback_row(response_row("p-x", "x", o, i), ratings, reward) for o, i, ratings, reward in specs]
    return [r["response_id"][-2:] for r in sorted(rows, key=ranking_key, reverse=True)]


def test_ranking_rule():
    assert _ranked(("candidate", 0, None, 9.0), ("candidate", 1, [-1], -9.0)) == ["c1", "c0"]
    assert _ranked(("candidate", 0, [1], 0.5), ("candidate", 1, [-1], 1.0)) == ["c1", "c0"]
    assert _ranked(("candidate", 0, [1], 1.0), ("candidate", 1, [0], 1.0)) == ["c0", "c1"]
    assert _ranked(("candidate", 0, [0, 0], None), ("candidate", 1, [1, -1], None)) == ["c1", "c0"]
    three_ones_one_minus = [1, 1, 1, -1]
    three_ones_no_minus = [1, 1, 1, 0, 0, 0]
    assert _ranked(("candidate", 0, three_ones_one_minus, None), ("candidate", 1, three_ones_no_minus, None)) == [
        "c1",
        "c0",
    ]
    assert _ranked(("refinement", 0, [1], None), ("candidate", 3, [1], None), ("candidate", 2, [1], None)) == [
        "c2",
        "c3",
        "r0",
    ]
