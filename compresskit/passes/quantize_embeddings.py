"""int8 embedding tables (weight-only, a scale per row): the size pass for token models.

Linear int8 (``quantize``, ``qat``, ``quantize_dynamic``) leaves ``nn.Embedding`` float,
and in a small text encoder the vocabulary table is most of the file: 46.9 of the 53 MB of
a pruned, int8-Linear all-MiniLM-L6-v2. This pass stores each table as int8 rows with a
float scale per row (4x smaller, row error <= scale / 2); lookups dequantize in the graph
(``Gather -> Cast -> Mul``), so ORT runs what torch runs. It composes with any other
quantization pass, before or after it.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.models.size import state_bytes
from compresskit.passes.base import Effects, Pass, PassConfig, register_pass
from compresskit.passes.records import QuantizeEmbeddingsRecord
from compresskit.quantization.embedding import Int8Embedding, int8_embeddings
from compresskit.quantization.prepare import excluded


class QuantizeEmbeddingsConfig(PassConfig):
    """Which embedding tables become int8."""

    exclude: list[str] = Field(
        default_factory=list, description="module-name patterns (fnmatch) kept in float"
    )
    min_rows: int = Field(
        default=1, ge=1, description="leave tables with fewer rows float (e.g. 512 positions)"
    )


def _tied_elsewhere(model: nn.Module, name: str, embedding: nn.Embedding) -> str | None:
    """The other module that shares this table's weight (an LM head tied to it), if any."""
    for other_name, other in model.named_modules():
        if other is embedding:
            continue
        if any(p is embedding.weight for p in other.parameters(recurse=False)):
            return other_name
    return None


@register_pass("quantize_embeddings")
class QuantizeEmbeddings(Pass[QuantizeEmbeddingsConfig]):
    """int8 rows for every ``nn.Embedding`` the forward uses (not excluded).

    Example::

        QuantizeEmbeddings(QuantizeEmbeddingsConfig(min_rows=1000)).apply(model, ctx)
    """

    config_cls = QuantizeEmbeddingsConfig
    effects = Effects(quantizes=frozenset({"embeddings"}))
    record_cls = QuantizeEmbeddingsRecord

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        if int8_embeddings(model):
            raise CompressKitError(
                "quantize_embeddings: the embeddings are already int8; remove one "
                "quantize_embeddings node"
            )
        converted, kept = [], []
        before = after = 0
        for name, module in list(model.named_modules()):
            if type(module) is not nn.Embedding:
                continue
            if module.num_embeddings < self.config.min_rows or excluded(name, self.config.exclude):
                kept.append(name)
                continue
            tied = _tied_elsewhere(model, name, module)
            if tied is not None:
                raise CompressKitError(
                    f"quantize_embeddings: {name!r} shares its weight with {tied!r}; add "
                    f"{name!r} to exclude (an int8 table cannot also serve a float layer)"
                )
            before += state_bytes(module)
            try:
                Int8Embedding.convert_(module)
            except ValueError as error:
                raise CompressKitError(
                    f"quantize_embeddings: {name!r}: {error}; add it to exclude"
                ) from None
            after += state_bytes(module)
            converted.append(name)
        if not converted:
            raise CompressKitError(
                "quantize_embeddings: no nn.Embedding to quantize"
                + (f" (all excluded: {kept})" if kept else "")
            )
        model.eval()
        with torch.no_grad():
            model(*ctx.example_inputs)  # fails here, not at export, if something is off
        ctx.record(
            int8_embeddings=converted,
            float_embeddings=kept,
            embedding_bytes_before=before,
            embedding_bytes_after=after,
        )
        return model
