"""Where a training step of the clustering recipe spends its time on the CPU.

    python benchmarks/fit_step.py                      # 1 thread, batch 256, 3 shapes
    python benchmarks/fit_step.py --threads 2 --shapes 3x32x32

For each image shape, decoder (``--decoders``: "light", the recipe's, by default;
"full") and precision (``--precisions``: float32, and bfloat16 autocast of the encoder
and decoder networks, what ``precision="auto"`` trains the recipe in on a CPU with
native bfloat16), one step of the recipe (``DiscreteAutoencoder()`` defaults: two augmented views,
the gumbel code, the view objectives, Adam) is cut into its parts and each part is
timed alone on the same batch: reading the batch (uint8 to float), the augmentation
(two views), the encoder forward and backward on both views, the quantizer and the view
objectives forward and backward, the decoder forward and backward with the
reconstruction loss, and Adam's update. Then the whole step, a fit through the
estimator (the training loop's own costs included), and a bare torch loop of the same
encoder, quantizer and decoder on the same batch and in the same precision
(reconstruction only: one view, no objectives) are timed. Figures are milliseconds per
step and images per second, as wall time and as the process's CPU time (less disturbed
by other work on a busy machine).
Random images; nothing here depends on the data's content. Writes JSON under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import cpu_header  # sibling: scripts run as benchmarks/X.py

from discretae.core.files import write_text_atomic
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder
from discretae.models.augment import augment
from discretae.models.training import to_unit_float


def timed(fn, repeats: int) -> dict:
    """Mean wall and CPU milliseconds of ``fn()`` over ``repeats`` calls, after one warm-up."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    n = repeats
    return {
        "wall_ms": (time.perf_counter() - wall) / n * 1e3,
        "cpu_ms": (time.process_time() - cpu) / n * 1e3,
    }


def build(shape, decoder: str, objectives: str = "auto", precision: str = "float32"):
    est = DiscreteAutoencoder(objectives=objectives, decoder=decoder, random_state=0)
    torch.manual_seed(0)
    model = est._build(shape)
    model.train()
    # what the training loop sets: the networks' autocast dtype (None: float32)
    model.low_precision = DTYPES[precision]
    return model


DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def cast(dtype):
    """Autocast to ``dtype`` on the CPU (off for None), as the model does in training."""
    return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)


def parts(shape, batch: int, decoder: str, precision: str, repeats: int) -> dict:
    """Each part of one recipe step, timed alone."""
    m = build(shape, decoder, precision=precision)
    dtype = m.low_precision
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    raw = torch.randint(0, 256, (4 * batch, *shape), dtype=torch.uint8)
    idx = torch.randperm(len(raw))[:batch]
    x = to_unit_float(raw[idx])
    views = torch.cat([augment(x, m.augment), augment(x, m.augment)])
    with torch.no_grad():
        out = m.encoder(views)
    d = m.quantizer.dim
    z = out[:, :d].clone()
    h = out[:, d + 2 * m.style_dim :].clone()
    dec_in = torch.randn(batch, d + m.style_dim)

    def enc():
        with cast(dtype):
            y = m.encoder(views)
        y.float().square().mean().backward()

    def objectives():
        zz, hh = z.clone().requires_grad_(), h.clone().requires_grad_()
        quantized, _, aux, _ = m.quantizer(zz[:batch])
        extra, _ = m.objectives(m.quantizer.logits(zz)[..., 0, :], zz, hh)
        (aux + extra + quantized.square().mean()).backward()

    def dec():
        with cast(dtype):
            logits = m.decoder(dec_in)
        F.binary_cross_entropy_with_logits(logits.float(), x).backward()

    def step():
        result = m(x)
        opt.zero_grad()
        (result["recon_loss"] + result["aux_loss"]).backward()
        opt.step()

    step()  # gradients exist, so Adam's update is timed on real state
    return {
        "read batch": timed(lambda: to_unit_float(raw[idx]), repeats),
        "augment (2 views)": timed(lambda: torch.cat([augment(x, m.augment)] * 2), repeats),
        "encoder fwd+bwd (2 views)": timed(enc, repeats),
        "quantizer + objectives fwd+bwd": timed(objectives, repeats),
        "decoder fwd+bwd (1 view)": timed(dec, repeats),
        "adam": timed(opt.step, repeats),
        "recipe step": timed(step, repeats),
    }


def bare_loop(shape, batch: int, decoder: str, precision: str, repeats: int) -> dict:
    """The same networks driven by a minimal loop: reconstruction of one view only, the
    networks under the same autocast."""
    m = build(shape, decoder, objectives="none")
    dtype = DTYPES[precision]
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = torch.rand(batch, *shape)

    def step():
        with cast(dtype):
            z = m.encoder(x)[:, : m.quantizer.dim].float()
        quantized = m.quantizer(z)[0]
        with cast(dtype):
            logits = m.decoder(quantized)
        loss = F.binary_cross_entropy_with_logits(logits.float(), x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed(step, repeats)


def estimator_fit(shape, batch: int, decoder: str, precision: str, epochs: int) -> dict:
    """Per step of ``DiscreteAutoencoder.fit`` (the whole training loop) on random images."""
    n = batch * 4
    x = np.random.default_rng(0).integers(0, 256, (n, shape[1], shape[2], shape[0]), np.uint8)
    est = DiscreteAutoencoder(
        decoder=decoder, epochs=epochs, batch_size=batch, device="cpu", precision=precision
    )
    wall, cpu = time.perf_counter(), time.process_time()
    est.fit(x if shape[0] > 1 else x[..., 0])
    steps = epochs * 4  # n = 4 batches per epoch
    return {
        "wall_ms": (time.perf_counter() - wall) / steps * 1e3,
        "cpu_ms": (time.process_time() - cpu) / steps * 1e3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["1x8x8", "1x28x28", "3x32x32"])
    p.add_argument("--decoders", nargs="+", default=["light"], choices=["full", "light"])
    p.add_argument("--precisions", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {**cpu_header("fit_step", "torch"), "threads": args.threads, "batch": args.batch}
    rows = []
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split("x"))
        for decoder in args.decoders:
            for precision in args.precisions:
                row = {"shape": text, "decoder": decoder, "precision": precision}
                row["parts"] = parts(shape, args.batch, decoder, precision, args.repeats)
                row["estimator fit"] = estimator_fit(shape, args.batch, decoder, precision, 2)
                row["bare loop"] = bare_loop(shape, args.batch, decoder, precision, args.repeats)
                rows.append(row)
                print_row(row, args.batch)
    result["rows"] = rows
    out = args.out or Path(__file__).parent / "results" / f"fit_step-cpu-{args.threads}t.json"
    write_text_atomic(out, json.dumps(result, indent=2))
    print(f"wrote {out}")


def print_row(row: dict, batch: int) -> None:
    print(f"\n{row['shape']}, decoder {row['decoder']}, {row['precision']}, batch {batch}")
    print(f"  {'part':34s} {'wall ms':>8s} {'cpu ms':>8s} {'img/s (cpu)':>12s}")
    items = [*row["parts"].items(), ("estimator fit", row["estimator fit"])]
    items.append(("bare torch loop (recon only)", row["bare loop"]))
    for name, t in items:
        rate = batch / t["cpu_ms"] * 1e3
        print(f"  {name:34s} {t['wall_ms']:8.1f} {t['cpu_ms']:8.1f} {rate:12.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
