"""Distributed training: two CPU processes under torchrun (gloo), on loopback.

- A script fits with the estimator on both ranks (a VQ model and the Gumbel recipe with
  its view objectives) and saves every rank's final weights and buffers: the ranks must
  hold identical weights and codebooks, equal to the model file rank 0 writes.
- The real command, `torchrun -m discretae.cli fit`, must leave a model close to a
  single-process run with the same global batch; its last checkpoint, resumed in one
  process, must end close to that run too. The data order and the global batch are the
  same, and each rank's loss is weighted by its share of the batch, so the averaged
  gradient is the single-process one up to float summation order: measured max weight
  difference 2e-6 after 14 steps; the bound is 1e-4.
- A helper script checks the quantizers' collectives directly against single-process
  results on the full batch: the gradients of the Gumbel KL and binary balance losses
  (global batch means) and the VQ codebook after k-means init and one EMA update.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from discretae.commands import fit as fit_command
from discretae.core.serialization import read_model_file
from discretae.data.datasets import load_dataset
from discretae.models.checkpoint import read_checkpoint

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or shutil.which("torchrun") is None,
    reason="needs torch.distributed and torchrun",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Two local processes, rendezvous and gloo on loopback only."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--local-addr=127.0.0.1",
        *map(str, args),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    # own process group, so a timeout takes the workers down too, not only the launcher
    proc = subprocess.Popen(
        cmd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def digits_npy(folder: Path) -> Path:
    """197 digits as uint8 (N, 8, 8): 7 batches of 32, the last one split 3 / 2."""
    images = load_dataset("digits").to_array()[:197, 0]
    path = folder / "digits.npy"
    np.save(path, np.rint(images * 255).astype(np.uint8))
    return path


RANKS_HELPER = '''
"""Run under torchrun: fit on every rank, save each rank's final state (argv: data, out)."""
import sys
import numpy as np
from safetensors.torch import save_file
from discretae import DiscreteAutoencoder
from discretae.core import distributed

data, out = np.load(sys.argv[1]), sys.argv[2]
device = distributed.init_from_env("cpu")
rank = distributed.rank()
MODELS = {
    "vq": dict(model="vq", n_codes=8, objectives="none"),
    "recipe": dict(model="gumbel", n_codes=6, objectives="auto"),
}
for name, params in MODELS.items():
    est = DiscreteAutoencoder(**params, epochs=2, batch_size=32, device=str(device))
    est.fit(data)
    state = {k: v.detach().cpu().contiguous() for k, v in est.model_.state_dict().items()}
    save_file(state, f"{out}/{name}-rank{rank}.safetensors")
    if rank == 0:
        est.save(f"{out}/{name}.safetensors")
distributed.shutdown()
'''


def test_torchrun_ranks_end_with_identical_weights(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_HELPER)
    r = torchrun(script, digits_npy(tmp_path), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("vq", "recipe"):
        rank0 = load_file(tmp_path / f"{name}-rank0.safetensors")
        rank1 = load_file(tmp_path / f"{name}-rank1.safetensors")
        assert rank0.keys() == rank1.keys() and "quantizer.codebook" in rank0
        for k in rank0:
            assert torch.equal(rank0[k], rank1[k]), f"{name}: {k} differs between ranks"
        saved, _ = read_model_file(tmp_path / f"{name}.safetensors")
        for k, v in rank0.items():
            assert torch.equal(saved[f"model.{k}"], v), k
    recipe = load_file(tmp_path / "recipe-rank0.safetensors")
    assert any(k.startswith("objectives.") for k in recipe)  # the view objectives trained


def test_torchrun_fit_matches_one_process_and_resumes(tmp_path):
    data = digits_npy(tmp_path)
    settings = ["--model", "vq", "--codes", "8", "--epochs", "2", "--batch-size", "32"]
    out = tmp_path / "ddp.safetensors"
    r = torchrun(
        "-m", "discretae.cli", "fit", data, *settings, "--device", "cpu", "--out", out, "--json",
        "--checkpoint-every", "5",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # only rank 0 prints
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    saved, _ = read_model_file(out)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = fit_command(
            str(data), out=tmp_path / "one.safetensors", model="vq", codes=8, epochs=2,
            batch_size=32, device="cpu",
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    single, _ = read_model_file(tmp_path / "one.safetensors")
    worst = max(float((single[k].float() - saved[k].float()).abs().max()) for k in single)
    assert worst < 1e-4, f"DDP and one process differ by {worst}"
    for a, b in zip(one["history"], summary["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["usage"] == b["usage"]

    # the last checkpoint (step 10 of 14, written by rank 0 alone) resumes in one process
    ckpt = tmp_path / "ddp.ckpt.safetensors"
    assert read_checkpoint(ckpt).step == 10
    assert sorted(p.name for p in tmp_path.iterdir() if ".ckpt" in p.name) == [ckpt.name]
    torch.set_num_threads(1)
    try:
        fit_command(str(data), out=tmp_path / "resumed.safetensors", resume=ckpt, device="cpu")
    finally:
        torch.set_num_threads(threads)
    resumed, _ = read_model_file(tmp_path / "resumed.safetensors")
    worst = max(float((single[k].float() - resumed[k].float()).abs().max()) for k in single)
    assert worst < 1e-4, f"resumed in one process, the DDP run ends {worst} away"


HELPER = '''
"""Run under torchrun with 2 ranks: quantizer collectives against one process."""
import json, sys
import torch
import torch.distributed as dist
from discretae.quantizers import BinaryQuantizer, GumbelQuantizer, VectorQuantizer

z = torch.randn(37, 6, generator=torch.Generator().manual_seed(0))  # split 19 / 18
MAKERS = {
    "gumbel": lambda: GumbelQuantizer(5, 6, groups=2, kl_weight=1.0),
    "binary": lambda: BinaryQuantizer(6, balance_weight=1.0),
}


def aux_loss(make, x):
    """A fresh quantizer (same init everywhere), x as a leaf, and its auxiliary loss."""
    torch.manual_seed(1)
    q = make().train()
    x = x.clone().requires_grad_(True)
    return x, q, q(x)[2]


def vq_step(x):
    torch.manual_seed(1)
    q = VectorQuantizer(4, 6, dead_code_threshold=0.0).train()
    q(x)
    return q


# single process first, on the full batch, before any process group exists
ref = {}
for name, make in MAKERS.items():
    x, q, aux = aux_loss(make, z)
    aux.backward()
    ref[name] = (x.grad, [p.grad for p in q.parameters()], float(aux))
ref_vq = vq_step(z)

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
rows = z.tensor_split(world)
mine = rows[rank]
share = len(mine) / len(z)
result = {"rank": rank}
for name, make in MAKERS.items():
    x, q, aux = aux_loss(make, mine)
    (aux * share * world).backward()  # how train() weights each rank's loss
    start = sum(len(r) for r in rows[:rank])
    gx = x.grad / world  # d(mean over ranks of the weighted losses) / dx
    result[name + "_input_grad"] = float((gx - ref[name][0][start:start + len(mine)]).abs().max())
    worst = 0.0
    for p, g in zip(q.parameters(), ref[name][1]):
        avg = p.grad.clone()
        dist.all_reduce(avg)
        worst = max(worst, float((avg / world - g).abs().max()))  # what DDP averages
    result[name + "_param_grad"] = worst
    result[name + "_aux"] = abs(float(aux) - ref[name][2])
vq = vq_step(mine)
result["vq_codebook"] = float((vq.codebook - ref_vq.codebook).abs().max())
result["vq_count"] = float((vq.ema_count - ref_vq.ema_count).abs().max())
result["vq_codebook_sum"] = float(vq.codebook.double().sum())
json.dump(result, open(sys.argv[1] + f"/rank{rank}.json", "w"))
dist.destroy_process_group()
'''


def test_quantizer_collectives_match_one_process(tmp_path):
    script = tmp_path / "helper.py"
    script.write_text(HELPER)
    r = torchrun(script, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for res in results:
        for kind in ("gumbel", "binary"):
            # global batch means: same loss and gradients as the full batch in one process
            assert res[f"{kind}_aux"] < 1e-6, res
            assert res[f"{kind}_input_grad"] < 1e-6, res
            assert res[f"{kind}_param_grad"] < 1e-6, res
        # k-means on the gathered batch (rank 0, broadcast), then all-reduced EMA sums
        assert res["vq_codebook"] < 1e-5 and res["vq_count"] < 1e-5, res
    assert results[0]["vq_codebook_sum"] == results[1]["vq_codebook_sum"]
