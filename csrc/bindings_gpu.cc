// hcomm._C, GPU and NPU part: the NCCL and HCCL loaders, their communicators, and the
// CUDA kernels' entry points. Marshalling only, plus one helper (DeviceAlgo) that runs
// the core's ring/tree allreduce over the NCCL transport until the Communicator routes
// device buffers itself. Pointers and streams travel as integers (torch's data_ptr()
// and cuda_stream, CuPy's .data.ptr and .ptr); every call that may block releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <random>

#include "algo/algorithms.h"
#include "comm/placement.h"
#include "device/cuda_memory.h"
#include "device/kernels.h"
#include "reduce/reduce.h"
#include "transport/hccl.h"
#include "transport/nccl.h"

#if HCOMM_WITH_CUDA
#include "reduce/cuda_reduce.h"
#endif

namespace py = pybind11;

namespace hcomm {
namespace {

using Release = py::call_guard<py::gil_scoped_release>;
const void* cptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* mptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

// Runs the core's allreduce algorithms over an NcclTransport: device buffers, the
// transport's streams ordered after the caller's stream and before its later work.
class DeviceAlgo {
 public:
  DeviceAlgo(std::shared_ptr<NcclTransport> t, double timeoutSec) : t_(std::move(t)), timeoutSec_(timeoutSec) {}

  void allreduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, const std::string& algo,
                 void* stream) {
    if (count == 0) return;
    if (op == ReduceOp::AVG || op == ReduceOp::PREMUL_SUM)
      throw Error("nccl " + algo + " allreduce: " + opName(op) + " runs natively only (algo='native')");
    int n = t_->size(), r = t_->rank();
    if (n == 1) {  // nothing to exchange; NCCL copies in to out on the stream
      t_->allreduce(in, out, count, dt, op, 1.0, stream);
      return;
    }
    auto routes = std::make_shared<std::vector<Route>>(n);
    for (int p = 0; p < n; ++p) (*routes)[p] = Route{t_.get(), p};
    uint64_t seq = seq_++;
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(timeoutSec_));
    // Tags: [63] device-algorithm space, [62..8] call number, [7..0] channel.
    Links l(r, n, routes, (1ull << 63) | (seq << 8), 0, dt, op, deadline, WaitPolicy(), [=] {
      return "nccl " + algo + " allreduce #" + std::to_string(seq) + " (" + dtypeName(dt) + ", count " +
             std::to_string(count) + ") rank " + std::to_string(r) + "/" + std::to_string(n);
    });
    t_->waitFor(stream);
    size_t seg = algo == "tree" ? (512u << 10) : (4u << 20);
    if (algo == "ring") algo::allreduceRing(l, in, out, count, seg);
    else if (algo == "tree") algo::allreduceTree(l, in, out, count, seg);
    else throw Error("unknown device allreduce algorithm '" + algo + "' (native, ring, tree)");
    // Links waited for every request, and a request completes when the GPU has reached
    // its event: the result is in place, the caller's stream needs no extra wait.
  }

  // Point to point over the transport, after the caller's stream's earlier work; blocks
  // the host until the GPU has finished it (or the timeout), so later work is ordered.
  void send(const void* buf, size_t nbytes, int peer, int64_t tag, void* stream) {
    t_->waitFor(stream);
    finish(t_->isend(peer, userTag(tag), buf, nbytes, 0));
  }
  void recv(void* buf, size_t nbytes, int peer, int64_t tag, void* stream) {
    t_->waitFor(stream);
    finish(t_->irecv(peer, userTag(tag), buf, nbytes, nullptr, 0));
  }

 private:
  static uint64_t userTag(int64_t tag) {  // [62] user space, below the algorithms' [63]
    if (tag < 0 || tag >= (1ll << 40)) throw Error("nccl send/recv: tag must be in [0, 2^40), got " + std::to_string(tag));
    return (1ull << 62) | (uint64_t(tag) << 8);
  }
  void finish(const RequestPtr& r) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutSec_);
    while (!r->done.load(std::memory_order_acquire)) {
      if (!t_->progress()) t_->sleepFor(50);
      if (std::chrono::steady_clock::now() > deadline && !r->done.load(std::memory_order_acquire)) {
        std::string why = std::string(r->isSend ? "send to" : "receive from") + " rank " + std::to_string(r->peer) +
                          " timed out after " + std::to_string(timeoutSec_) + " s";
        t_->abort("nccl: " + why);
        throw TimeoutError("nccl: " + why);
      }
    }
    if (!r->error.empty()) throw Error(r->error);
  }

  std::shared_ptr<NcclTransport> t_;
  double timeoutSec_;
  uint64_t seq_ = 0;
};

struct NcclComm {
  std::shared_ptr<NcclTransport> transport;
  DeviceAlgo algos;
  double timeout;
};

#if HCOMM_WITH_CUDA
void cudaCheck(int err, const char* what) {
  if (err != 0)
    throw Error(std::string(what) + " failed: " + loadCudaRuntime().api.GetErrorString(cuda::Error(err)));
}

// Random bytes that are finite values of `dt` (no NaN or Inf, so results compare bitwise).
std::vector<char> randomValues(DataType dt, size_t count, std::mt19937_64& rng) {
  std::vector<char> out(count * dtypeSize(dt));
  std::uniform_int_distribution<int> small(-3, 3);
  std::uniform_real_distribution<double> real(-2.0, 2.0);
  for (size_t i = 0; i < count; ++i) {
    char* p = out.data() + i * dtypeSize(dt);
    uint64_t bits = rng();
    switch (dt) {
      case DataType::F16: {  // exponent 10..20: about 2^-5 .. 2^5
        uint16_t h = uint16_t((bits & 0x8000) | ((10 + bits % 11) << 10) | ((bits >> 20) & 0x3ff));
        std::memcpy(p, &h, 2);
        break;
      }
      case DataType::BF16: {
        uint16_t h = uint16_t((bits & 0x8000) | ((122 + bits % 11) << 7) | ((bits >> 20) & 0x7f));
        std::memcpy(p, &h, 2);
        break;
      }
      case DataType::F32: { float f = float(real(rng)); std::memcpy(p, &f, 4); break; }
      case DataType::F64: { double d = real(rng); std::memcpy(p, &d, 8); break; }
      case DataType::BOOL: *p = char(bits & 1); break;
      case DataType::I32: { int32_t v = int32_t(bits); std::memcpy(p, &v, 4); break; }
      case DataType::I64: { int64_t v = int64_t(bits); if (bits & 1) v = small(rng); std::memcpy(p, &v, 8); break; }
      default: *p = char(bits); break;  // i8, u8: every value, so sums and products wrap
    }
  }
  return out;
}

// Every dtype and op, odd lengths, aligned and misaligned and aliased pointers, against
// the CPU kernels bit for bit. Returns the failures (empty: all passed).
std::vector<std::string> cudaSelfTest() {
  const CudaRuntime& rt = loadCudaRuntime();
  std::string why;
  if (cudaDeviceCount(&why) == 0) throw Error("cuda self-test: no device (" + why + ")");
  std::mt19937_64 rng(2024);
  std::vector<std::string> failures;
  const size_t counts[] = {1, 15, 4099};
  void* dev = nullptr;
  constexpr size_t kCap = 3 * (4099 + 1) * 8 + 64;
  cudaCheck(rt.api.Malloc(&dev, kCap), "cudaMalloc");
  char* base = static_cast<char*>(dev);
  auto run = [&](const std::string& name, DataType dt, size_t count, size_t shiftElems, bool alias,
                 auto gpu, auto cpu) {
    size_t es = dtypeSize(dt), bytes = count * es, slot = (4099 + 1) * 8;
    std::vector<char> a = randomValues(dt, count, rng), b = randomValues(dt, count, rng), want(bytes), got(bytes);
    char* da = base + shiftElems * es;
    char* db = base + slot + shiftElems * es;
    char* dd = alias ? da : base + 2 * slot + shiftElems * es;
    cudaCheck(rt.api.Memcpy(da, a.data(), bytes, cuda::cudaMemcpyHostToDevice), "cudaMemcpy");
    cudaCheck(rt.api.Memcpy(db, b.data(), bytes, cuda::cudaMemcpyHostToDevice), "cudaMemcpy");
    cudaCheck(gpu(dd, da, db), name.c_str());
    cudaCheck(rt.api.Memcpy(got.data(), dd, bytes, cuda::cudaMemcpyDeviceToHost), "cudaMemcpy");
    cpu(want.data(), a.data(), b.data());
    if (std::memcmp(want.data(), got.data(), bytes) != 0)
      failures.push_back(name + " " + dtypeName(dt) + " count " + std::to_string(count) + " shift " +
                         std::to_string(shiftElems) + (alias ? " aliased" : ""));
  };
  for (int d = int(DataType::F16); d <= int(DataType::BOOL); ++d) {
    DataType dt = DataType(d);
    for (size_t count : counts) {
      for (size_t shift : {size_t(0), size_t(1)}) {
        for (int o = int(ReduceOp::SUM); o <= int(ReduceOp::MAX); ++o) {
          ReduceOp op = ReduceOp(o);
          run(std::string("reduce ") + opName(op), dt, count, shift, shift == 1,
              [&](void* dd, const void* da, const void* db) { return hcommCudaReduce(d, o, dd, da, db, count, nullptr); },
              [&](void* w, const void* a, const void* b) { reduce(dt, op, w, a, b, count); });
        }
        run("scale", dt, count, shift, false,
            [&](void* dd, const void* da, const void*) { return hcommCudaScale(d, dd, da, count, 3.0, nullptr); },
            [&](void* w, const void* a, const void*) { scale(dt, w, a, count, 3.0); });
        run("divide", dt, count, shift, false,
            [&](void* dd, const void* da, const void*) { return hcommCudaDivide(d, dd, da, count, 3, nullptr); },
            [&](void* w, const void* a, const void*) { divide(dt, w, a, count, 3); });
      }
    }
  }
  rt.api.Free(dev);
  return failures;
}
#endif

py::dict cudaReport() {
  py::dict d;
  d["built_with_kernels"] = bool(HCOMM_WITH_CUDA);
  try {
    d["runtime"] = loadCudaRuntime().origin;
  } catch (const Error& e) {
    d["runtime"] = py::none();
    d["reason"] = std::string(e.what());
    d["device_count"] = 0;
    return d;
  }
  std::string why;
  d["device_count"] = cudaDeviceCount(&why);
  d["reason"] = why;
  return d;
}

void bindNccl(py::module_& m) {
  m.def("nccl_version", [](const std::vector<std::string>& candidates) {
    const NcclLibrary& lib = loadNccl(candidates);
    return py::make_tuple(lib.version, ncclVersionString(lib.version), lib.path);
  }, py::arg("candidates") = std::vector<std::string>{});
  m.def("nccl_unique_id", [](const std::vector<std::string>& candidates) {
    return py::bytes(ncclNewUniqueId(candidates));
  }, py::arg("candidates") = std::vector<std::string>{});

  py::class_<NcclComm, std::shared_ptr<NcclComm>>(m, "NcclComm")
      .def(py::init([](int rank, int size, py::bytes uid, int device, double timeout,
                       const std::vector<std::string>& candidates) {
             std::string id = uid;
             py::gil_scoped_release release;
             auto t = std::make_shared<NcclTransport>(rank, size, id, device, timeout, candidates);
             return std::make_shared<NcclComm>(NcclComm{t, DeviceAlgo(t, timeout), timeout});
           }),
           py::arg("rank"), py::arg("size"), py::arg("unique_id"), py::arg("device"), py::arg("timeout") = 300.0,
           py::arg("candidates") = std::vector<std::string>{})
      .def_property_readonly("rank", [](NcclComm& c) { return c.transport->rank(); })
      .def_property_readonly("size", [](NcclComm& c) { return c.transport->size(); })
      .def_property_readonly("device", [](NcclComm& c) { return c.transport->device(); })
      .def_property_readonly("nccl_version", [](NcclComm& c) { return c.transport->ncclVersion(); })
      .def("allreduce", [](NcclComm& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt,
                           const std::string& op, double premul, const std::string& algo, uintptr_t stream) {
        if (algo.empty() || algo == "native" || algo == "auto")
          c.transport->allreduce(cptr(in), mptr(out), n, parseDataType(dt), parseReduceOp(op), premul, mptr(stream));
        else
          c.algos.allreduce(cptr(in), mptr(out), n, parseDataType(dt), parseReduceOp(op), algo, mptr(stream));
      }, py::arg("inp"), py::arg("out"), py::arg("count"), py::arg("dtype"), py::arg("op") = "sum",
         py::arg("premul") = 1.0, py::arg("algo") = "native", py::arg("stream") = 0, Release())
      .def("reduce", [](NcclComm& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt,
                        const std::string& op, double premul, int root, uintptr_t stream) {
        c.transport->reduce(cptr(in), mptr(out), n, parseDataType(dt), parseReduceOp(op), premul, root, mptr(stream));
      }, Release())
      .def("broadcast", [](NcclComm& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt, int root,
                           uintptr_t stream) {
        c.transport->broadcast(cptr(in), mptr(out), n, parseDataType(dt), root, mptr(stream));
      }, Release())
      .def("allgather", [](NcclComm& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt,
                           uintptr_t stream) {
        c.transport->allgather(cptr(in), mptr(out), n, parseDataType(dt), mptr(stream));
      }, Release())
      .def("reduce_scatter", [](NcclComm& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt,
                                const std::string& op, double premul, uintptr_t stream) {
        c.transport->reduceScatter(cptr(in), mptr(out), n, parseDataType(dt), parseReduceOp(op), premul,
                                   mptr(stream));
      }, Release())
      .def("send", [](NcclComm& c, uintptr_t buf, size_t nbytes, int peer, int64_t tag, uintptr_t stream) {
        c.algos.send(cptr(buf), nbytes, peer, tag, mptr(stream));
      }, py::arg("buf"), py::arg("nbytes"), py::arg("peer"), py::arg("tag") = 0, py::arg("stream") = 0, Release())
      .def("recv", [](NcclComm& c, uintptr_t buf, size_t nbytes, int peer, int64_t tag, uintptr_t stream) {
        c.algos.recv(mptr(buf), nbytes, peer, tag, mptr(stream));
      }, py::arg("buf"), py::arg("nbytes"), py::arg("peer"), py::arg("tag") = 0, py::arg("stream") = 0, Release())
      .def("synchronize", [](NcclComm& c, uintptr_t stream) { c.transport->synchronize(mptr(stream), c.timeout); },
           py::arg("stream") = 0, Release())
      .def("abort", [](NcclComm& c, const std::string& why) { c.transport->abort(why); },
           py::arg("why") = "aborted by the user", Release());
}

struct NpuPlacement {
  Placement where;
  std::unique_ptr<PlacementScope> scope;
  NpuPlacement(int device, uintptr_t stream) : where{device, mptr(stream), true} {}
};

void bindHccl(py::module_& m) {
  m.def("hccl_available", [] {
    std::string why = hcclUnavailableReason();
    return py::make_tuple(why.empty(), why);
  });
  m.def("hccl_root_info", [] { return py::bytes(HcclComm::newRootInfo()); });
  py::class_<HcclComm, std::shared_ptr<HcclComm>>(m, "HcclComm")
      .def(py::init([](int rank, int size, py::bytes info, int device) {
             std::string s = info;
             py::gil_scoped_release release;
             return std::make_shared<HcclComm>(rank, size, s, device);
           }),
           py::arg("rank"), py::arg("size"), py::arg("root_info"), py::arg("device"))
      .def_property_readonly("rank", &HcclComm::rank)
      .def_property_readonly("size", &HcclComm::size)
      .def("allreduce", [](HcclComm& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt,
                           const std::string& op, uintptr_t stream) {
        c.allreduce(cptr(in), mptr(out), n, parseDataType(dt), parseReduceOp(op), mptr(stream));
      }, Release())
      .def("broadcast", [](HcclComm& c, uintptr_t buf, size_t n, const std::string& dt, int root, uintptr_t stream) {
        c.broadcast(mptr(buf), n, parseDataType(dt), root, mptr(stream));
      }, Release())
      .def("allgather", [](HcclComm& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt,
                           uintptr_t stream) { c.allgather(cptr(in), mptr(out), n, parseDataType(dt), mptr(stream)); },
           Release())
      .def("reduce_scatter", [](HcclComm& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt,
                                const std::string& op, uintptr_t stream) {
        c.reduceScatter(cptr(in), mptr(out), n, parseDataType(dt), parseReduceOp(op), mptr(stream));
      }, Release())
      .def("send", [](HcclComm& c, uintptr_t buf, size_t n, const std::string& dt, int peer, uintptr_t stream) {
        c.send(cptr(buf), n, parseDataType(dt), peer, mptr(stream));
      }, Release())
      .def("recv", [](HcclComm& c, uintptr_t buf, size_t n, const std::string& dt, int peer, uintptr_t stream) {
        c.recv(mptr(buf), n, parseDataType(dt), peer, mptr(stream));
      }, Release())
      .def("synchronize", [](HcclComm& c, uintptr_t stream) { c.synchronize(mptr(stream)); }, py::arg("stream") = 0,
           Release());
  // `with _C.on_npu(device, stream):` around a Communicator call made with NPU buffers:
  // the call runs on that NPU, ordered after the aclrtStream (comm/placement.h).
  py::class_<NpuPlacement>(m, "on_npu")
      .def(py::init<int, uintptr_t>(), py::arg("device"), py::arg("stream"))
      .def("__enter__", [](NpuPlacement& g) { g.scope.reset(new PlacementScope(g.where)); })
      .def("__exit__", [](NpuPlacement& g, py::args) { g.scope.reset(); });
}

void bindCuda(py::module_& m) {
  m.def("cuda_report", &cudaReport);
  // The CUDA device of a pointer (-1: host memory), for arrays that do not say.
  m.def("cuda_pointer_device", [](uintptr_t p) { return cudaPointerDevice(cptr(p)); });
  m.def("device_kernels", [] { return std::string(deviceKernels().name); });
#if HCOMM_WITH_CUDA
  m.def("cuda_self_test", &cudaSelfTest, Release());
  m.def("_cuda_reduce", [](const std::string& dt, const std::string& op, uintptr_t dst, uintptr_t a, uintptr_t b,
                           size_t count, uintptr_t stream) {
    cudaCheck(hcommCudaReduce(int(parseDataType(dt)), int(parseReduceOp(op)), mptr(dst), cptr(a), cptr(b), count,
                              mptr(stream)), "hcommCudaReduce");
  }, Release());
  m.def("_cuda_scale", [](const std::string& dt, uintptr_t dst, uintptr_t src, size_t count, double factor,
                          uintptr_t stream) {
    cudaCheck(hcommCudaScale(int(parseDataType(dt)), mptr(dst), cptr(src), count, factor, mptr(stream)),
              "hcommCudaScale");
  }, Release());
  m.def("_cuda_divide", [](const std::string& dt, uintptr_t dst, uintptr_t src, size_t count, int64_t divisor,
                           uintptr_t stream) {
    cudaCheck(hcommCudaDivide(int(parseDataType(dt)), mptr(dst), cptr(src), count, divisor, mptr(stream)),
              "hcommCudaDivide");
  }, Release());
#endif
}

}  // namespace
}  // namespace hcomm

// Called from bindings.cc, which sees no GPU header.
void bindGpu(pybind11::module_& m) {
  hcomm::bindNccl(m);
  hcomm::bindHccl(m);
  hcomm::bindCuda(m);
}
