from __future__ import annotations

import random
import uuid

import pytest

from babychain.ids import is_canonical_uuid


def _by_uuid(value: str) -> bool:
    """The definition: what Python's UUID parser reads back as the same canonical text."""
    if len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


SAMPLE = "0b9c1234-5678-4abc-8def-0123456789ab"


@pytest.mark.parametrize(
    "value",
    [
        SAMPLE,
        SAMPLE.upper(),
        "{" + SAMPLE[1:-1] + "}",
        "urn:uuid:" + SAMPLE[:27],
        SAMPLE.replace("-", ""),
        SAMPLE[:8] + "_" + SAMPLE[9:],
        SAMPLE[:35] + "\n",
        SAMPLE + "\n",
        "0b9c1234-5678-4abc-8def-0123456789a\u0661",  # an Arabic-Indic digit, which int() reads
        "0b9c1234-5678-4abc-8def-01234567_9ab",
        "0b9c12345678-4abc-8def-0123456789ab-",
        "",
    ],
)
def test_a_canonical_uuid_is_what_the_uuid_parser_reads_back_as_itself(value: str) -> None:
    assert is_canonical_uuid(value) is _by_uuid(value)


def test_random_near_uuids_agree_with_the_parser() -> None:
    rng = random.Random(7)
    alphabet = "0123456789abcdefABCDEF-_{}:gz \u0661"
    agreed_true = 0
    for _ in range(20_000):
        chars = list(str(uuid.UUID(int=rng.getrandbits(128))))
        for _ in range(rng.randint(0, 2)):
            chars[rng.randrange(36)] = rng.choice(alphabet)
        value = "".join(chars)
        assert is_canonical_uuid(value) is _by_uuid(value), value
        agreed_true += _by_uuid(value)
    assert 1000 < agreed_true < 20_000
