"""The Triton field backend as an operator: ``torch.ops.fastflow.field_triton`` (a ``torch.library.triton_op``).

What each machine can check:
- everywhere: the schema and the autograd registration (opcheck), the results through the op against the float64
  reference, and a clear error for ``backend='triton'`` inside torch.compile off CUDA;
- on the CPU without the interpreter (a subprocess: the kernels must be decorated as compiled JITFunctions), with
  fake CUDA tensors: the op's fake outputs, and AOTAutograd's decomposition of the op into the two Triton kernel
  calls per chunk, the graph Inductor would compile; no CUDA is needed to trace;
- on CUDA (FASTFLOW_TEST_DEVICE=cuda): the full opcheck, and fullgraph torch.compile with Inductor against eager.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _util import DEVICE, rel_err_rows

import fastflow
from fastflow._core import loader as _loader
from fastflow.field.logweights import POISSON

pytestmark = pytest.mark.skipif(not _loader.triton_usable_on(DEVICE), reason="Triton not usable on this device")

B, R, D_ = 6, 40, 10


def _args(dtype=torch.float32, chunk_size=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D_, generator=g).to(DEVICE, dtype)
    ref = torch.randn(R, D_, generator=g).to(DEVICE, dtype)
    t = (torch.rand(B, generator=g) + 0.5).to(DEVICE)
    a = torch.ones(B, device=DEVICE)
    p = (D_ + 1) / 2  # Poisson(D=1)
    return x, ref, t, a, POISSON, p, 0.0, "ieee", chunk_size


def test_op_is_registered_with_its_schema():
    op = torch.ops.fastflow.field_triton.default
    schema = str(op._schema)
    assert schema.startswith("fastflow::field_triton(Tensor x, Tensor ref, Tensor t, Tensor a,")
    assert schema.endswith("-> (Tensor, Tensor, Tensor)")
    assert not any(arg.alias_info for arg in op._schema.arguments), "the op must not declare mutated inputs"


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_op_matches_reference(chunk_size):
    """The op itself (one chunk, and three chunks of 16 rows) against the float64 reference backend."""
    x, ref, t, a, kind, p, q, prec, cs = _args(chunk_size=chunk_size)
    xbar, log_norm, ess = torch.ops.fastflow.field_triton(x, ref, t, a, kind, p, q, prec, cs)
    fam = fastflow.Poisson(D=1)
    want, st = fam.posterior_mean(x.double().cpu(), t.double().cpu(), ref.double().cpu(), backend="reference",
                                  return_stats=True)
    assert xbar.dtype == log_norm.dtype == ess.dtype == torch.float32
    assert rel_err_rows(xbar, want) <= 2e-5
    torch.testing.assert_close(ess.double().cpu(), st.ess, rtol=1e-4, atol=0)
    # log_norm here is the op's raw logsumexp; the family's stats are the same quantity
    torch.testing.assert_close(log_norm.double().cpu(), st.log_norm, rtol=1e-5, atol=1e-4)


def test_opcheck_schema_and_autograd_registration():
    """Runs the op and checks that it leaves its inputs alone and returns no alias of them (test_schema), and
    that it has no autograd formula that torch would silently skip (test_autograd_registration)."""
    torch.library.opcheck(torch.ops.fastflow.field_triton.default, _args(),
                          test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the CPU-only error")
def test_compile_with_triton_backend_off_cuda_says_why():
    torch._dynamo.reset()
    x, ref = _args()[:2]
    fn = torch.compile(lambda x, ref: fastflow.Poisson(D=1).posterior_mean(x, 0.5, ref, backend="triton"),
                       fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="compiles only on CUDA"):
        fn(x, ref)


# Run in a fresh interpreter with TRITON_INTERPRET unset: the kernels decorate as JITFunctions, which is what
# wrap_triton can trace. Fake CUDA tensors need no GPU; the mutation analysis needs a Triton driver and without one
# torch assumes every pointer argument is written (it logs a warning, silenced here).
TRACE_SCRIPT = textwrap.dedent("""
    import json, logging, os
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["FASTFLOW_TRITON_TILES"] = "BLOCK_N=16"
    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.CRITICAL)
    import torch
    import fastflow
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._functorch.aot_autograd import aot_export_module

    B, R, d = 6, 40, 10
    with FakeTensorMode():
        x = torch.empty(B, d, device="cuda", dtype=torch.float16)
        ref = torch.empty(R, d, device="cuda", dtype=torch.float16)
        t = torch.empty(B, device="cuda")
        a = torch.empty(B, device="cuda")
        outs = torch.ops.fastflow.field_triton(x, ref, t, a, 0, 5.5, 0.0, "ieee", 16)

    class Target(torch.nn.Module):
        def forward(self, x, ref, t, a):
            xbar, log_norm, ess = torch.ops.fastflow.field_triton(x, ref, t, a, 0, 5.5, 0.0, "ieee", 16)
            return (x.float() - xbar, log_norm, ess)

    gm, sig = aot_export_module(Target(), (x, ref, t, a), trace_joint=False)
    nodes = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__ for n in gm.graph.nodes
               if n.op == "call_function" and "triton_kernel_wrapper" in str(n.target)]
    out_node = [n for n in gm.graph.nodes if n.op == "output"][0]
    vals = [v.meta["val"] for v in out_node.args[0][-3:]]
    # torch.compile itself (Dynamo + AOTAutograd) on CPU tensors with dynamic shapes: the compiled graph is
    # captured and never run (running it needs a GPU). One graph must serve both batch sizes.
    from torch._dynamo.backends.common import aot_autograd

    class Captured(Exception):
        pass

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)

        def run(*args):
            raise Captured()
        return run

    def f(x, ref, t, a):
        xbar, log_norm, ess = torch.ops.fastflow.field_triton(x, ref, t, a, 0, 5.5, 0.0, "ieee", None)
        return x - xbar, log_norm, ess

    compiled = torch.compile(f, backend=aot_autograd(fw_compiler=capture), fullgraph=True, dynamic=True)
    for b in (6, 9):
        try:
            compiled(torch.randn(b, d), torch.randn(R, d), torch.rand(b) + 0.5, torch.ones(b))
        except Captured:
            pass
    grids = [n.kwargs["grid"] for g in graphs for n in g.graph.nodes
             if n.op == "call_function" and "triton_kernel_wrapper" in str(n.target)]

    print(json.dumps({
        "dynamo_graphs": len(graphs),
        "symbolic_grids": sum(not isinstance(g[0][0], int) for g in grids),
        "dynamo_kernels": len(grids),
        "fake": [[list(o.shape), str(o.dtype), str(o.device)] for o in outs],
        "kernels": kernels,
        "opaque_left": sum("fastflow.field_triton" in s for s in nodes),
        "host_reads": sum("_local_scalar_dense" in s for s in nodes),
        "cache_key_kernels": sorted(k.fn.__name__ for k in
                                    torch._library.triton.get_triton_kernels_for_op("fastflow::field_triton")),
        "graph_out": [[list(v.shape), str(v.dtype), str(v.device)] for v in vals],
    }))
""")


@pytest.mark.skipif(DEVICE.type == "cuda", reason="on CUDA the compile tests below run the real thing")
def test_op_traces_into_triton_kernel_calls_on_fake_cuda_tensors():
    """What torch.compile does with the op on a GPU, up to Inductor's code generation: the fake outputs have the
    right shapes, dtypes and device, and AOTAutograd decomposes the op into torch ops plus the Triton kernels,
    two per chunk of reference rows (40 rows in chunks of 16: 3 chunks), with no host read of a value; and
    torch.compile(dynamic=True) itself traces it into one graph for two batch sizes."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", TRACE_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    want_meta = [[[6, 10], "torch.float32", "cuda:0"], [[6], "torch.float32", "cuda:0"],
                 [[6], "torch.float32", "cuda:0"]]
    assert got["fake"] == want_meta
    assert got["graph_out"] == want_meta
    assert got["kernels"] == ["_field_logits_kernel", "_field_wsum_kernel"] * 3
    assert got["opaque_left"] == 0
    assert got["host_reads"] == 0
    # torch keys its compile cache on the kernels it finds in the op's source
    assert got["cache_key_kernels"] == ["_field_logits_kernel", "_field_wsum_kernel"]
    # torch.compile(dynamic=True): one graph for batches of 6 and 9, its two kernel grids symbolic in the batch
    assert got["dynamo_graphs"] == 1
    assert got["dynamo_kernels"] == 2
    assert got["symbolic_grids"] == 2


cuda_only = pytest.mark.skipif(DEVICE.type != "cuda", reason="compiling Triton kernels needs CUDA")


@cuda_only
@pytest.mark.parametrize("chunk_size", [None, 16])
def test_full_opcheck_on_cuda(chunk_size):
    torch.library.opcheck(torch.ops.fastflow.field_triton.default, _args(chunk_size=chunk_size))


@cuda_only
@pytest.mark.parametrize("name", ["pfgm.target", "pfgmpp_target", "Gaussian.posterior_mean"])
def test_targets_with_triton_backend_compile_with_inductor(name):
    """A compiled training target on the Triton backend: the Triton kernels inside an Inductor graph give what
    eager mode gives."""
    torch._dynamo.reset()
    fns = {
        "pfgm.target": lambda x, t, ref: fastflow.pfgm.target(x, t, ref, backend="triton"),
        "pfgmpp_target": lambda x, t, ref: fastflow.pfgmpp_target(x, t, ref, D=128, backend="triton"),
        "Gaussian.posterior_mean": lambda x, t, ref: fastflow.Gaussian().posterior_mean(x, t, ref,
                                                                                         backend="triton"),
    }
    x, ref, t = _args()[:3]
    fn = fns[name]
    want = fn(x, t, ref)
    got = torch.compile(fn, fullgraph=True)(x, t, ref)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)
