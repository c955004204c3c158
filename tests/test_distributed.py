"""Reference sets across torch.distributed ranks (fastflow/distributed.py): two gloo processes on the CPU give
exactly what one process holding the concatenated batch gives."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastflow
from fastflow.distributed import gather_reference

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

SIZES = (5, 3)  # uneven: the gather pads and trims
D = 12


def global_batch():
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(sum(SIZES), D, generator=g)
    x = x0 + 0.5 * torch.randn(sum(SIZES), D, generator=g)
    z = torch.rand(sum(SIZES), generator=g) + 0.2
    return x0, x, z


def outputs(x, z, ref):
    """Everything a rank computes against the (global) reference set."""
    return {"ref": ref,
            "pfgm": fastflow.pfgm.target(x, z, ref),
            "pfgmpp": fastflow.pfgmpp_target(x, z, ref, D=128),
            "stf": fastflow.stf_target(x, z, ref),
            "velocity": fastflow.Poisson(D=1).velocity(x, z, ref)}


def _worker(rank: int, world: int, init: str, out: str):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        x0, x, z = global_batch()
        lo = sum(SIZES[:rank])
        sl = slice(lo, lo + SIZES[rank])
        res = outputs(x[sl], z[sl], gather_reference(x0[sl]))
        # bad inputs raise on every rank (none is left waiting in a collective)
        errors = []
        bad_shape = torch.zeros(2, D + rank)
        for bad in (bad_shape, torch.full((2, D), float("nan")) if rank == 1 else torch.zeros(2, D)):
            try:
                gather_reference(bad)
                errors.append(None)
            except ValueError as e:
                errors.append(str(e))
        res["errors"] = errors
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    world = len(SIZES)
    mp.spawn(_worker, args=(world, f"file://{tmp_path / 'init'}", str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{k}.pt") for k in range(world)]
    x0, x, z = global_batch()
    one = outputs(x, z, x0)
    for r in ranks:
        assert torch.equal(r["ref"], x0)  # the global set, in rank order, on every rank
        assert "differ in per-row shape" in r["errors"][0]
        assert "NaN or inf on rank(s) [1]" in r["errors"][1]
    for key in ("pfgm", "pfgmpp", "stf", "velocity"):
        got = torch.cat([r[key] for r in ranks])
        assert torch.equal(got, one[key]), (key, float((got - one[key]).abs().max()))


def test_needs_an_initialised_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="init_process_group"):
        gather_reference(torch.zeros(2, 3))
