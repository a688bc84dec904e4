"""Contract test of the pass."""

from __future__ import annotations

from contract import PassContract

from compresskit.testing.tiny_lm import tiny_llama, tiny_lm_bundle


class TestQuantizeInt4Contract(PassContract):
    """int4 is recorded for export: the torch model stays float and must still keep the
    contract (the int4 graph itself is tested in tests/export/test_lowbit.py)."""

    pass_name = "quantize_int4"
    settings = {"algorithm": "rtn"}
    language_model = True

    def subject(self, trained_tiny_cnn, tiny):
        return tiny_llama(), tiny_lm_bundle(seq_len=16)
