// The extension module fastflow._C: the schemas of the fastflow:: operators, and a minimal Python module.
//
// Importing fastflow._C loads this library, whose static TORCH_LIBRARY / TORCH_LIBRARY_IMPL blocks register
// the ops in torch.ops.fastflow; the kernels live in field_step.cpp, draw.cpp,
// rk_step.cpp, rk_control.cpp and sinkhorn.cpp (CPU) and cuda/*.cu (CUDA).
// The module itself only says whether the CUDA kernels were compiled in (WITH_CUDA, read by
// fastflow/_loader.py). It is written against Python's C API rather than pybind11 / <torch/extension.h>:
// with that header this file takes 19 s to compile instead of 4 s, for one attribute.

// Python.h must come before any standard header (it sets feature macros that they read).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <torch/library.h>

TORCH_LIBRARY(fastflow, m) {
  // The fake (meta) implementations live in Python; torch requires this pointer to the module that registers
  // them with torch.library.register_fake.
  m.set_python_module("fastflow._core.ops");
  // One streaming step of the field over the chunk of C reference points that starts at index `offset`
  // (online_step_torch in fastflow/field/torch_backend.py): dots (B, C) is overwritten with the weights; mmin (the
  // running smallest a^2 ||y_j||^2 - 2 a x.y_j, see field_math.h), jmin (int64), l, l2 (B,) are updated in place; the returned alpha (B,) rescales the caller's running weighted sum.
  m.def(
      "field_step_(Tensor(a!) dots, Tensor xn, Tensor yn, Tensor t, Tensor a, Tensor(b!) mmin, Tensor(c!) jmin, "
      "Tensor(d!) l, Tensor(e!) l2, int offset, int kind, float p, float q) -> Tensor");
  // The fused sampler (draw.cpp, cuda/draw.cu): for each row i of out (n, d), out_i = a_i x0_i + scale_i rho_i g_i
  // (x0 absent: scale_i rho_i g_i), g_i ~ N(0, I_d) from Philox4x32-10 with key `seed` (a (1,) int64 tensor on
  // out's device, read by the kernel there, so drawing the key from a generator never stalls the host) and counter
  // (element group, row, offset, stream); rho_i by radius_kind: 0: 1; 1: 1/||h||, h ~ N(0, I_D), D = radius_param;
  // 2: atanh(U)/||g||; 3: -log1p(-U)/||g||. a and scale (n,) float64.
  m.def(
      "draw_(Tensor(a!) out, Tensor? x0, Tensor a, Tensor scale, Tensor seed, int offset, int radius_kind, "
      "float radius_param) -> ()");
  // The fused step updates of the Runge-Kutta solvers (rk_step.cpp; specification in
  // fastflow/ode/step_reference.py), one pass over the stages K (S, B, d) each; h (B,) float64.
  // rk_combine_: out (B, d) = y + h sum_j coeffs[j] K[j] (out may be y itself).
  m.def("rk_combine_(Tensor(a!) out, Tensor y, Tensor[] K, Tensor h, float[] coeffs) -> ()");
  // rk_error_norm_: out (B,) = sqrt(mean_d (h sum_j e_coeffs[j] K[j] / (atol + rtol max(|y|, |y_new|)))^2),
  // float64 for float64 states, else float32.
  m.def(
      "rk_error_norm_(Tensor(a!) out, Tensor y, Tensor y_new, Tensor[] K, Tensor h, float[] e_coeffs, float rtol, "
      "float atol) -> ()");
  // rk_control_ (rk_control.cpp; specification: control_reference in fastflow/ode/control.py): the per-sample
  // step-size control of the adaptive solvers after a trial step, on (n,) tensors in the time dtype (err and xmax,
  // the trial state's max |x| per row, in any float dtype); status (n, 6) bool: done, stalled, bad, accept, lands,
  // rejected; gains: safety, fac_min, fac_max, alpha/k, beta/k, 1/k, err_prev_min, land_stretch.
  m.def(
      "rk_control_(Tensor(a!) t, Tensor(b!) h, Tensor(c!) h_try, Tensor(d!) t_next, Tensor(e!) err_prev, "
      "Tensor(f!) status, Tensor t1, Tensor err, Tensor xmax, float[] gains) -> ()");
  // sinkhorn_lse (sinkhorn.cpp; specification: sinkhorn_lse_reference in fastflow/ot.py): the log-sum-exp of one
  // log-domain Sinkhorn half-iteration on a float64 cost C (B, R): dim 1: out_i = LSE_j(h_j - scale C_ij), h (R,),
  // out (B,); dim 0: out_j = LSE_i(h_i - scale C_ij), h (B,), out (R,).
  m.def("sinkhorn_lse(Tensor C, Tensor h, float scale, int dim) -> Tensor");
}

namespace {

#ifdef WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

PyModuleDef fastflow_c_module = {
    PyModuleDef_HEAD_INIT,
    "fastflow._C",
    "fastflow's compiled kernels; importing it registers the torch.ops.fastflow operators.",
    -1,       // no per-module state
    nullptr,  // no functions: the ops are called through torch.ops.fastflow
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&fastflow_c_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddObjectRef(module, "WITH_CUDA", kWithCuda ? Py_True : Py_False) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
