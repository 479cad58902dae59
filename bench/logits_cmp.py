#!/usr/bin/env python3
"""logits_cmp.py VOCAB REF.bin NAME=FILE.bin [NAME=FILE.bin ...]

Compare teacher-forced logits dumps (gemma-generate --dump-logits: float32 [positions, VOCAB])
against a reference: per configuration, mean and max KL(p_ref || p), top-1 agreement and mean
normalized logits error, printed as Markdown table rows."""
import sys

import numpy as np


def logp(x):
    z = x - x.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def main():
    if len(sys.argv) < 4:
        print(__doc__)
        return 2
    V = int(sys.argv[1])
    ref = np.fromfile(sys.argv[2], dtype=np.float32).reshape(-1, V).astype(np.float64)
    lp = logp(ref)
    print("| config | positions | KL mean | KL max | top-1 agree | logits nerr |")
    print("|---|---|---|---|---|---|")
    for arg in sys.argv[3:]:
        name, path = arg.split("=", 1)
        x = np.fromfile(path, dtype=np.float32).reshape(-1, V).astype(np.float64)
        if x.shape != ref.shape:
            print(f"| {name} | shape {x.shape} != {ref.shape} |")
            continue
        lq = logp(x)
        kl = (np.exp(lp) * (lp - lq)).sum(1)
        top1 = (ref.argmax(1) == x.argmax(1)).mean()
        nerr = np.linalg.norm(x - ref, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"| {name} | {ref.shape[0]} | {kl.mean():.3e} | {kl.max():.3e} | {100 * top1:.1f}% | {nerr.mean():.3e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
