"""bench/mutation.py keeps mutation verdicts per function: after an edit, only the mutants of
the functions that changed (or are new) need running again, and a module moved to another
file keeps its verdicts. These tests pin what the carry relies on (mutmut names and numbers
mutants per function) and what it keeps and drops."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("mutmut")

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mutation", ROOT / "bench" / "mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mutation"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mutation = _load()

OLD = '''
def fee(amount: int) -> int:
    """The fee."""
    return amount * 3 // 100 + 1


def cap(amount: int, limit: int) -> int:
    return min(amount, limit - 1)


def gone(x: int) -> bool:
    return x > 2


class Ledger:
    def charge(self, amount: int) -> int:
        return amount + 7
'''

NEW = '''
def added(x: int) -> int:
    return x - 5


def fee(amount: int) -> int:
    """The fee, in base units."""  # a docstring and a comment are no code
    return amount * 3 // 100 + 1


def cap(amount: int, limit: int) -> int:
    return min(amount, limit)


class Ledger:
    def charge(self, amount: int) -> int:
        return amount + 7
'''


def _by_function(names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(mutation.function_of(name), []).append(name)
    return out


def test_function_hashes_change_only_for_the_edited_functions() -> None:
    old, new = mutation.function_hashes(OLD), mutation.function_hashes(NEW)
    assert set(old) == {"x_fee", "x_cap", "x_gone", "x\u01c1Ledger\u01c1charge"}
    assert mutation.changed_functions(old, new) == {"x_cap", "x_gone", "x_added"}
    assert mutation.function_hashes("def broken(:\n") == {}
    # a pragma that stops a line's mutations changes the function's mutants: and its hash
    kept = OLD.replace("limit - 1)", "limit - 1)  # pragma: no mutate")
    assert mutation.changed_functions(old, mutation.function_hashes(kept)) == {"x_cap"}


def test_names_are_mutmuts() -> None:
    """function_hashes names every function the way mutmut names its mutants."""
    names = mutation._mutant_names("src/pkg/money.py", OLD)
    assert names and all(n.startswith("pkg.money.") for n in names)
    assert set(_by_function(names)) == set(mutation.function_hashes(OLD))
    assert mutation.dotted_module("src/agoranet/payments/schemes/__init__.py") == \
        "agoranet.payments.schemes"


def test_carry_keeps_unchanged_functions_verdicts_under_the_new_name() -> None:
    old_names = mutation._mutant_names("src/pkg/payments/money.py", OLD)
    # verdicts as a run stores them: killed (1), survived (0), unrun (None)
    previous = {n: (0 if i % 3 == 0 else 1 if i % 3 == 1 else None)
                for i, n in enumerate(old_names)}
    # the module moved (payments/ split into accept/ and pay/) and was edited
    carried = mutation.carry_verdicts(previous, mutation.function_hashes(OLD),
                                      mutation.function_hashes(NEW), "pkg.accept.money")
    new_names = mutation._mutant_names("src/pkg/accept/money.py", NEW)
    kept = _by_function(list(carried))
    assert set(kept) == {"x_fee", "x\u01c1Ledger\u01c1charge"}
    assert set(carried) <= set(new_names)
    for name, code in carried.items():
        assert previous["pkg.payments.money." + mutation._mangled(name)] == code
    # every mutant of the changed and the new function is left to run afresh
    fresh = _by_function([n for n in new_names if n not in carried])
    assert set(fresh) == {"x_cap", "x_added"}
    # the removed function's verdicts go
    assert not any(mutation.function_of(n) == "x_gone" for n in carried)


def test_a_carried_verdict_belongs_to_the_same_mutation() -> None:
    """mutmut numbers mutations within a function: an unchanged function's mutant N is the
    same broken line after other functions were added, edited or removed."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.mutation.file_mutation import mutate_file_contents

    old_code = mutate_file_contents("m.py", OLD).code
    new_code = mutate_file_contents("m.py", NEW).code
    carried = mutation.carry_verdicts(
        dict.fromkeys(mutation._mutant_names("src/m.py", OLD), 1),
        mutation.function_hashes(OLD), mutation.function_hashes(NEW), "m")
    assert len(carried) >= 4
    for name in carried:  # the same lines changed (a docstring around them may differ)
        old_diff = get_diff_for_mutant(name, source=old_code, path="m.py")
        new_diff = get_diff_for_mutant(name, source=new_code, path="m.py")
        assert mutation._changed_lines(old_diff) == mutation._changed_lines(new_diff)
        assert mutation._changed_lines(old_diff)[0]


def test_nothing_carries_without_a_record_of_the_old_code() -> None:
    previous = dict.fromkeys(mutation._mutant_names("src/m.py", OLD), 1)
    assert mutation.carry_verdicts(previous, {}, mutation.function_hashes(OLD), "m") == {}
    same = mutation.function_hashes(OLD)
    assert mutation.carry_verdicts(previous, same, same, "m") == previous


def test_a_run_again_replaces_only_the_verdicts_it_gave() -> None:
    previous = {"m.x_f__mutmut_1": 1, "m.x_f__mutmut_2": 0, "m.x_f__mutmut_3": 0}
    run = {"m.x_f__mutmut_1": None, "m.x_f__mutmut_2": 1, "m.x_f__mutmut_3": None,
           "m.x_g__mutmut_1": None, "m.x_g__mutmut_2": 0}
    retried = ["m.x_f__mutmut_2", "m.x_f__mutmut_3", "m.x_g__mutmut_1", "m.x_g__mutmut_2"]
    assert mutation.merge_verdicts(previous, run, retried) == {
        "m.x_f__mutmut_1": 1,  # not retried: carried
        "m.x_f__mutmut_2": 1,  # killed now
        "m.x_f__mutmut_3": 0,  # retried, not reached (cut short): its last verdict
        "m.x_g__mutmut_1": None,  # new, not reached: unrun
        "m.x_g__mutmut_2": 0,
    }
