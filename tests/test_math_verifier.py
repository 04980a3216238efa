import json

import pytest

from rlrf_hub.feedback.verifier import VERIFIER_NAME, extract_final_number, reference_number, verify_math


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sold 72 clips.", "72"),
        ("The answer is 42.", "42"),
        ("the answer is: 1,234", "1234"),
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
        ("#### 1,200", "1200"),
        ("It costs $1,234.50 in total.", "1234.5"),
        ("He earns €15 per hour.", "15"),
        ("The garden is 12 cm long.", "12"),
        ("The temperature dropped to -3 degrees.", "-3"),
        ("She owes -$5 now.", "-5"),
        ("He ran 2.50 miles.", "2.5"),
        ("So the total is 42.0", "42"),
        ("The answer is 18 dollars, because she had 20 and spent 2.", "18"),
        ("So the answer is 3 + 4 = 7.", "7"),
        ("Answer: 5\nCheck: 2 + 3 = 5, and 10 - 5 = 5.", "5"),
        ("First 3 apples, then 5 more, so 8 apples.", "8"),
        ("The final answer is \\boxed{16}.", "16"),
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("3/4 of the pizza", "0.75"),
        ("Half off: 50% of the price.", "50"),
        ("1, 2, 3", "3"),
        ("12,345,678 people", "12345678"),
        ("x = 10 - 3 = 7", "7"),
        ("He has 1/3 of it", "1/3"),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


@pytest.mark.parametrize("text", ["", None, "I do not know.", "There is no number here."])
def test_no_number(text):
    assert extract_final_number(text) is None


def test_reference_number_needs_a_marked_answer():
    assert reference_number("Step one.\n#### 1,080") == "1080"
    assert reference_number("36") == "36"
    assert reference_number("The answer is $5.") == "5"
    assert reference_number("Paris has 2 million inhabitants and 20 districts.") is None
    assert reference_number(None) is None


def test_verify_math_correct_and_wrong():
    reference = "She has 2 + 3 = <<2+3=5>>5 apples.\n#### 5"
    right = verify_math("She ends up with 5.0 apples.", reference)
    assert right.rating == 1
    assert "5" in right.critique
    wrong = verify_math("She ends up with 6 apples.", reference)
    assert wrong.rating == -1
    assert "6" in wrong.critique and "5" in wrong.critique
    missing = verify_math("She ends up with some apples.", reference)
    assert missing.rating == -1
    assert "5" in missing.critique and "does not state" in missing.critique
    assert VERIFIER_NAME == "verifier:final-number"


def test_verify_math_commas_and_currency_equal():
    assert verify_math("The total cost is $1,200.00.", "#### 1,200").rating == 1
    assert verify_math("The total cost is $1,200.50.", "#### 1,200").rating == -1


def test_verify_math_without_reference_number_raises():
    with pytest.raises(ValueError):
        verify_math("42", "no number at all")


def test_gsm8k_reference_solutions_verify_as_correct(data_dir):
    rows = [json.loads(line) for line in (data_dir / "gsm8k/train.jsonl").open()][:200]
    assert len(rows) == 200
    for row in rows:
        expected = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert reference_number(row["answer"]) == expected
        assert verify_math(row["answer"], row["answer"]).rating == 1, row["answer"]
        # the same solution with a different final number is caught
        assert verify_math(row["answer"].replace("#### ", "#### 1"), row["answer"]).rating == -1
