"""The corpus of bad inputs: generated cases for every command, each one a command line
(with the files it needs) that must end in exit 2 with one line naming what is wrong.

A case is ``Case(id, build, expect)`` (:mod:`corpus_kit`): ``build(kit)`` writes the case's
files into ``kit.dir`` and returns the arguments; ``expect`` are fragments the message must
contain (the field, the value or the fix); ``markers`` are files that must not exist
afterwards (code a bad input would run if it were trusted writes them).
"""

from __future__ import annotations

from corpus_data import data_cases
from corpus_kit import Case
from corpus_models import checkpoint_cases
from corpus_options import option_cases
from corpus_policies import policy_cases


def all_cases() -> list[Case]:
    cases = [*policy_cases(), *checkpoint_cases(), *data_cases(), *option_cases()]
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    return cases
