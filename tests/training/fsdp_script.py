"""Run by torchrun from test_fsdp.py: LM distillation of a tiny Llama through the distill
pass with ``train.sharding`` argv[2] (ddp or fsdp). Rank 0 saves the trained weights and
history to the path in argv[1]; in one process, the script trains the same way, unsharded."""

from __future__ import annotations

import sys

import torch

from compresskit.context import Context
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.testing.tiny_lm import tiny_llama, tiny_lm_bundle, tiny_tokenizer
from compresskit.training import distributed
from compresskit.training.loop import TrainConfig


def main(out: str, sharding: str) -> None:
    world = distributed.setup()
    bundle = tiny_lm_bundle(tiny_tokenizer(), seq_len=16)
    # A narrower student: the hidden loss trains a projector outside the sharded model.
    teacher, student = tiny_llama(seed=0), tiny_llama(seed=2, hidden_size=24, head_dim=8)
    config = DistillConfig(
        losses=[{"kind": "reverse_kl"}, {"kind": "task"}, {"kind": "hidden", "weight": 0.1}],
        train=TrainConfig(
            steps=4, eval_every=2, batch_size=8, optimizer="sgd", lr=0.1, sharding=sharding
        ),
    )
    ctx = Context(data=bundle, teacher=teacher, example_inputs=bundle.example_inputs(2))
    student = Distill(config).apply(student, ctx)
    assert type(student).__name__ == "LlamaForCausalLM"  # the model itself, not a shard
    assert not any(type(p).__name__ == "DTensor" for p in student.parameters())
    if world.is_main:
        torch.save({"state": student.state_dict(), "history": ctx.records["history"]}, out)
        print(f"{sharding} ok on {world.world_size} process(es)", flush=True)


if __name__ == "__main__":
    with distributed.session():
        main(sys.argv[1], sys.argv[2])
