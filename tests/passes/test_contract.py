"""Every built-in pass keeps the contract: its test file subclasses
:class:`contract.PassContract` (``tests/passes/contract.py``); nothing here lists passes."""

from __future__ import annotations

from contract import PassContract, contract_classes

from compresskit.passes import registered_passes


def test_every_builtin_pass_has_a_contract_class() -> None:
    covered = contract_classes()
    builtin = {name for name in registered_passes() if not name.startswith("test_")}
    assert builtin - set(covered) == set(), f"passes without a {PassContract.__name__} subclass"
    assert all(issubclass(cls, PassContract) for cls in covered.values())
