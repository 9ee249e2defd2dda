// hcomm._C: marshalling only. Every blocking call releases the GIL.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "hcomm compiled core";
  m.def("build_config", [] {
    py::dict d;
    d["with_mpi"] = bool(HCOMM_WITH_MPI);
    d["with_cuda"] = bool(HCOMM_WITH_CUDA);
    return d;
  });
}
