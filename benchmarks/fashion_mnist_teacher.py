"""Train the Fashion-MNIST teacher (``models.resnet_fmnist``) on CPU and save its state dict.

    python benchmarks/fashion_mnist_teacher.py            # ~4 epochs, a few minutes on 2 cores
    python benchmarks/fashion_mnist_teacher.py --quick    # 1 epoch on a slice (smoke test)

Writes ``benchmarks/artifacts/fashion_mnist_resnet.pt`` (state dict) and a sidecar
``.json`` with the test accuracy, the epochs and the wall time. Uses compresskit's
Fashion-MNIST bundle: trains on ``train``, keeps the best epoch on ``val``, reports on
``eval`` (the official 10k test set, which training never sees).
"""

from __future__ import annotations

import os

# Passive OpenMP waits: with 2 threads on 2 shared cores, spinning workers made a training
# step 4.5x slower whenever another process was running (measured: 745 ms vs 181 ms).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import resnet_fmnist  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TEACHER_PATH = ARTIFACTS / "fashion_mnist_resnet.pt"


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train_teacher(*, epochs: int, quick: bool, seed: int = 0) -> dict[str, object]:
    from torch.utils.data import DataLoader, Subset

    from compresskit.data import load_data

    torch.manual_seed(seed)
    data = load_data("fashion-mnist", seed=seed)
    train_set = Subset(data.train, range(4096)) if quick else data.train
    val_set = Subset(data.val, range(1024)) if quick else data.val
    eval_set = Subset(data.eval, range(1024)) if quick else data.eval
    loader = DataLoader(
        train_set, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    model = resnet_fmnist()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.2, total_steps=epochs * len(loader), pct_start=0.25
    )
    best = (-1.0, 0, None)
    history = []
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            # Horizontal flips only: the one augmentation that helps at this few epochs.
            flip = torch.rand(len(x)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        val = accuracy(model, DataLoader(val_set, batch_size=512))
        history.append(
            {
                "epoch": epoch,
                "loss": loss.item(),
                "val_accuracy": val,
                "seconds": time.perf_counter() - start,
            }
        )
        print(
            f"epoch {epoch}: loss {loss.item():.3f} val {val:.4f} "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
        if val > best[0]:
            best = (val, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    test = accuracy(model, DataLoader(eval_set, batch_size=512))
    return {
        "model": model,
        "test_accuracy": test,
        "val_accuracy": best[0],
        "best_epoch": best[1],
        "epochs": history,
        "train_seconds": time.perf_counter() - start,
        "params": sum(p.numel() for p in model.parameters()),
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="1 epoch on a 4k-sample slice")
    parser.add_argument("--out", type=Path, default=TEACHER_PATH)
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = train_teacher(epochs=1 if args.quick else args.epochs, quick=args.quick)
    model = result.pop("model")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"test accuracy {result['test_accuracy']:.4f} ({result['train_seconds']:.0f}s) "
        f"-> {args.out}"
    )


if __name__ == "__main__":
    main()
