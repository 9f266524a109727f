"""CLIP's text-tower step: every row at the full context, against the two exact shortcuts CLIP
takes (padding cut after the batch's last end-of-text token; each distinct caption once), in one
process. Forward + backward on a batch of template captions of Fashion-MNIST's class names.

    .venv/bin/python benchmarks/text_tower.py
"""

from __future__ import annotations

import argparse
import time

import torch

from selfsup.data.captions import TEMPLATES, class_prompts
from selfsup.data.idx import FASHION_MNIST
from selfsup.nn.text import TextTransformer, Tokenizer


def timed(tower: TextTransformer, tokens: torch.Tensor, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        tower(tokens).sum().backward()
        best = min(best, time.perf_counter() - start)
        tower.zero_grad(set_to_none=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = Tokenizer(32)
    tower = TextTransformer(tokenizer.vocab_size, 32, width=128, layers=4, heads=4, out_dim=128)
    captions = [p for per_class in class_prompts(FASHION_MNIST.classes[:7]) for p in per_class]  # the seen classes
    ids = torch.randint(0, len(captions), (args.batch,))
    table = tokenizer(captions)
    rows = table[ids]
    full = torch.where(rows == 0, torch.ones_like(rows), rows)  # no padding at all: every position computed
    full[torch.arange(len(rows)), rows.argmax(1)] = 1           # and no early end-of-text token...
    full[:, -1] = tokenizer.eot                                  # ...but one at the very end: the full context
    distinct = table[ids.unique()]
    print(f"CPU kernels {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}, batch "
          f"{args.batch} of {len(captions)} template captions ({len(TEMPLATES)} templates x 7 classes), "
          f"best of {args.rounds}, forward + backward:")
    timed(tower, rows, 2)  # warm up
    results = [(name, timed(tower, tokens, args.rounds)) for name, tokens in (
        ("every row, full 32-token context", full), ("every row, padding cut", rows),
        (f"{len(distinct)} distinct rows, padding cut", distinct))]
    for name, seconds in results:
        print(f"  {name:<36} {1000 * seconds:8.1f} ms   {results[0][1] / seconds:6.1f}x faster")


if __name__ == "__main__":
    main()
