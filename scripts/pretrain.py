"""Reproduce the shipped default model: train on synthetic series only (no real data, so nothing
from any benchmark leaks into it) and write lstm_stream/data/pretrained.safetensors.

    python scripts/pretrain.py            # the shipped settings
    python scripts/pretrain.py --series 40 --length 1000 --epochs 2 --out /tmp/m.safetensors  # quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lstm_stream.checkpoint import save_model
from lstm_stream.config import EngineConfig
from lstm_stream.models import build_model
from lstm_stream.pretrained import PRETRAINED_PATH
from lstm_stream.synthetic import corpus
from lstm_stream.training import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=320, help="number of synthetic series")
    ap.add_argument("--length", type=int, default=3000, help="samples per series")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=PRETRAINED_PATH)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = EngineConfig()
    cfg = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(update={"epochs": args.epochs, "stride": 32, "seed": args.seed})
        }
    )
    model = build_model(cfg.model, seed=args.seed)
    data = corpus(args.series, args.length, seed=args.seed)
    t0 = time.time()

    def show(info):
        print(
            f"epoch {info.epoch}/{info.epochs} train {info.train_loss:.4f} val {info.val_loss:.4f} "
            f"lr {info.lr:.2g} {info.seconds:.1f}s",
            flush=True,
        )

    report = fit(model, data, cfg, progress=show)
    info = {
        "trained_on": f"synthetic corpus: {args.series} series x {args.length}, seed {args.seed}",
        "val_loss": report.val_loss,
        "best_epoch": report.best_epoch,
        "seconds": round(time.time() - t0, 1),
    }
    save_model(args.out, model, cfg, info)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
