// hcomm._C: marshalling only. Python (hcomm/) turns arrays into (pointer, count, dtype)
// and validates them; every call that may block releases the GIL.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "comm/bootstrap.h"
#include "algo/names.h"
#include "comm/communicator.h"
#include "comm/placement.h"
#include "reduce/reduce.h"
#include "topo/host.h"
#include "topo/policy.h"
#include "topo/probe.h"
#include "topo/racks.h"
#include "topo/socket_cpu.h"
#include "topo/topology.h"
#include "topo/tuner.h"

namespace py = pybind11;
using namespace hcomm;

void bindGpu(py::module_& m);  // bindings_gpu.cc: NCCL/HCCL loaders, CUDA kernels (each guarded inside)

namespace {

const void* cptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* mptr(uintptr_t p) { return reinterpret_cast<void*>(p); }
using Release = py::call_guard<py::gil_scoped_release>;

// A blocking call returns None rather than its finished Work: wrapping a C++ object for
// Python costs about as much as a small collective's own bookkeeping.
WorkPtr asyncOnly(WorkPtr w, bool async) { return async ? std::move(w) : nullptr; }

// A C-contiguous numpy array of a dtype hcomm supports, in native byte order (and
// writable when asked): its element type, data and count. False for anything else.
bool plainArray(py::handle h, bool writable, DataType* dt, void** data, size_t* count) {
  if (!py::isinstance<py::array>(h)) return false;
  auto a = py::reinterpret_borrow<py::array>(h);
  if (!(a.flags() & py::array::c_style) || (writable && !a.writeable())) return false;
  py::dtype d = a.dtype();
  if (d.byteorder() == '>') return false;
  char kind = d.kind();
  py::ssize_t size = d.itemsize();
  if (kind == 'f' && size == 2) *dt = DataType::F16;
  else if (kind == 'f' && size == 4) *dt = DataType::F32;
  else if (kind == 'f' && size == 8) *dt = DataType::F64;
  else if (kind == 'i' && size == 1) *dt = DataType::I8;
  else if (kind == 'i' && size == 4) *dt = DataType::I32;
  else if (kind == 'i' && size == 8) *dt = DataType::I64;
  else if (kind == 'u' && size == 1) *dt = DataType::U8;
  else if (kind == 'b' && size == 1) *dt = DataType::BOOL;
  else return false;
  *data = const_cast<void*>(a.data());
  *count = static_cast<size_t>(a.size());
  return true;
}

// The most common call, a blocking allreduce of numpy arrays with a plain op and the
// automatic algorithm, checked and run without building a Python object (about a
// microsecond less per call than hcomm/comm.py's path). False, having done nothing,
// for anything else: the caller then takes the Python path, which validates everything
// and names what is wrong.
bool allreduceArrays(Communicator& c, py::handle x, py::handle out, py::handle op) {
  DataType dt, outDt;
  void *src, *dst;
  size_t n, outN;
  if (!plainArray(x, out.is_none(), &dt, &src, &n)) return false;
  if (out.is_none()) dst = src;
  else if (!plainArray(out, true, &outDt, &dst, &outN) || outDt != dt || outN != n) return false;
  if (!py::isinstance<py::str>(op)) return false;
  ReduceOp rop;
  if (!tryParseReduceOp(op.cast<std::string>(), &rop) || rop == ReduceOp::PREMUL_SUM) return false;  // needs a factor
  if (rop == ReduceOp::AVG && dt == DataType::BOOL) return false;
  py::gil_scoped_release release;
  c.allreduce(src, dst, n, dt, rop, 1.0, "", false);
  return true;
}

// The placement of the calls made inside a `with` block (one thread, one call at a time).
struct PlacementGuard {
  Placement where;
  std::unique_ptr<PlacementScope> scope;
  PlacementGuard(int device, uintptr_t stream) : where{device, mptr(stream)} {}
  void enter() { scope.reset(new PlacementScope(where)); }
  void exit() { scope.reset(); }
};

// A Python callable that may be destroyed on the progress thread: take the GIL to drop it.
std::function<void(const std::string&)> pyCallback(py::function fn) {
  auto holder = std::shared_ptr<py::function>(new py::function(std::move(fn)), [](py::function* f) {
    py::gil_scoped_acquire gil;
    delete f;
  });
  return [holder](const std::string& err) {
    py::gil_scoped_acquire gil;
    try {
      if (err.empty()) (*holder)(py::none()); else (*holder)(py::str(err));
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("hcomm Work callback");
    }
  };
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "hcomm compiled core";
  py::register_exception<Error>(m, "Error", PyExc_RuntimeError);
  bindGpu(m);

  m.def("build_config", [] {
    py::dict d;
    d["with_mpi"] = bool(HCOMM_WITH_MPI);
    d["with_cuda"] = bool(HCOMM_WITH_CUDA);
    d["simd"] = simdName(simdLevel());
    return d;
  });
  m.def("get_unique_id", [](double timeout) { return newUniqueId(timeout).str(); }, py::arg("timeout") = 300.0);
  m.def("start_root", [](const std::string& host, int port, const std::string& token, double timeout) {
    return startRootAt(host, port, token, timeout).str();
  });
  m.def("random_token", &randomToken);
  // The data pointer of a numpy array, without building __array_interface__'s dict.
  m.def("ndarray_ptr", [](py::array a) { return reinterpret_cast<uintptr_t>(a.data()); });
  m.def("host_identity", &hostIdentity);
  m.def("simd_level", [] { return std::string(simdName(simdLevel())); });
  m.def("_local_reduce", [](const std::string& level, const std::string& dt, const std::string& op, uintptr_t dst,
                            uintptr_t a, uintptr_t b, size_t count, bool streamed) {
    SimdLevel lv = level == "avx512" ? SimdLevel::AVX512 : level == "avx2" ? SimdLevel::AVX2 : SimdLevel::GENERIC;
    (streamed ? reduceStreamedAt : reduceAt)(lv, parseDataType(dt), parseReduceOp(op), mptr(dst), cptr(a), cptr(b),
                                             count);
  }, py::arg("level"), py::arg("dtype"), py::arg("op"), py::arg("dst"), py::arg("a"), py::arg("b"), py::arg("count"),
     py::arg("streamed") = false);

  // One fold step (reduce.h's accumulate) at an explicit SIMD level, for the kernel tests;
  // a = 0 means none.
  m.def("_local_accumulate", [](const std::string& level, const std::string& dt, const std::string& op, uintptr_t dst,
                                bool dstWide, uintptr_t a, bool aWide, uintptr_t b, size_t count) {
    SimdLevel lv = level == "avx512" ? SimdLevel::AVX512 : level == "avx2" ? SimdLevel::AVX2 : SimdLevel::GENERIC;
    accumulateAt(lv, parseDataType(dt), parseReduceOp(op), mptr(dst), dstWide, a ? cptr(a) : nullptr, aWide, cptr(b),
                 count);
  }, py::arg("level"), py::arg("dtype"), py::arg("op"), py::arg("dst"), py::arg("dst_wide"), py::arg("a"),
     py::arg("a_wide"), py::arg("b"), py::arg("count"));

  py::class_<Work, WorkPtr>(m, "Work")
      .def("wait", &Work::wait, py::arg("timeout") = -1.0, Release())
      .def("is_completed", &Work::isCompleted)
      .def("is_success", &Work::isSuccess)
      .def("error", &Work::error)
      .def("add_done_callback", [](Work& w, py::function fn) { w.onComplete(pyCallback(std::move(fn))); })
      .def("wait_stream", [](Work& w, uintptr_t stream) { w.waitStream(mptr(stream)); }, Release())
      .def_property_readonly("on_device", &Work::onDevice)
      .def_readonly("source", &Work::source)
      .def_readonly("received", &Work::received);

  // `with _C.on_device(device, stream):` around a Communicator call made with device
  // buffers: the call runs on that device, ordered after the stream (comm/placement.h).
  py::class_<PlacementGuard>(m, "on_device")
      .def(py::init<int, uintptr_t>(), py::arg("device"), py::arg("stream"))
      .def("__enter__", [](PlacementGuard& g) { g.enter(); })
      .def("__exit__", [](PlacementGuard& g, py::args) { g.exit(); });

  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "Communicator")
      .def_static("create", &Communicator::create, py::arg("rank"), py::arg("size"), py::arg("unique_id"),
                  py::arg("timeout"), Release())
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("id", &Communicator::id)
      .def_property_readonly("closed", &Communicator::closed)
      .def_property("timeout", &Communicator::timeout, &Communicator::setTimeout)
      .def("world_ranks", &Communicator::worldRanks)
      .def_property_readonly("device", &Communicator::boundDevice)
      .def("device_transports", &Communicator::deviceTransports)
      .def("device_engine", &Communicator::deviceEngine)
      .def("transports", &Communicator::transports)
      .def("last_algorithm", &Communicator::lastAlgorithm)
      .def("flight_record_json", &Communicator::flightRecordJson)
      .def("dump_flight_record", &Communicator::dumpFlightRecord)
      .def("choose_allreduce", &Communicator::chooseAllreduce)
      .def("split", &Communicator::split, Release())
      .def("shrink", &Communicator::shrink, py::arg("exclude"), Release())
      .def("abort", &Communicator::abort, py::arg("why"), Release())
      .def("rescue_address", &Communicator::rescueAddress)
      .def("close", &Communicator::close, Release())
      .def("allreduce_arrays", &allreduceArrays)
      .def("allreduce", [](Communicator& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt,
                           const std::string& op, double premul, const std::string& algo, bool async) {
        return asyncOnly(c.allreduce(cptr(in), mptr(out), n, parseDataType(dt), parseReduceOp(op), premul, algo, async), async);
      }, Release())
      .def("reduce", [](Communicator& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt,
                        const std::string& op, double premul, int root, const std::string& algo, bool async) {
        return asyncOnly(c.reduce(cptr(in), mptr(out), n, parseDataType(dt), parseReduceOp(op), premul, root, algo, async), async);
      }, Release())
      .def("broadcast", [](Communicator& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt, int root,
                           const std::string& algo, bool async) {
        return asyncOnly(c.broadcast(cptr(in), mptr(out), n, parseDataType(dt), root, algo, async), async);
      }, Release())
      .def("allgatherv", [](Communicator& c, uintptr_t in, uintptr_t out, std::vector<size_t> counts,
                            const std::string& dt, const std::string& algo, bool async) {
        return asyncOnly(c.allgatherv(cptr(in), mptr(out), std::move(counts), parseDataType(dt), async, algo), async);
      }, Release())
      .def("reduce_scatterv", [](Communicator& c, uintptr_t in, uintptr_t out, std::vector<size_t> counts,
                                 const std::string& dt, const std::string& op, double premul, const std::string& algo,
                                 bool async) {
        return asyncOnly(c.reduceScatterv(cptr(in), mptr(out), std::move(counts), parseDataType(dt), parseReduceOp(op),
                                premul, async, algo), async);
      }, Release())
      .def("alltoallv", [](Communicator& c, uintptr_t in, std::vector<size_t> sc, std::vector<size_t> sd,
                           uintptr_t out, std::vector<size_t> rc, std::vector<size_t> rd, const std::string& dt,
                           const std::string& algo, bool async) {
        return asyncOnly(c.alltoallv(cptr(in), sc, sd, mptr(out), rc, rd, parseDataType(dt), async, algo), async);
      }, Release())
      .def("gather", [](Communicator& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt, int root,
                        bool async) { return asyncOnly(c.gather(cptr(in), mptr(out), n, parseDataType(dt), root, async), async); },
           Release())
      .def("scatter", [](Communicator& c, uintptr_t in, uintptr_t out, size_t n, const std::string& dt, int root,
                         bool async) { return asyncOnly(c.scatter(cptr(in), mptr(out), n, parseDataType(dt), root, async), async); },
           Release())
      .def("barrier", [](Communicator& c, bool async) { return asyncOnly(c.barrier(async), async); }, Release())
      .def("send", [](Communicator& c, uintptr_t buf, size_t nbytes, int peer, int64_t tag, bool async) {
        return asyncOnly(c.send(cptr(buf), nbytes, peer, tag, async), async);
      }, Release())
      .def("recv", [](Communicator& c, uintptr_t buf, size_t nbytes, int peer, int64_t tag, bool async) {
        return c.recv(mptr(buf), nbytes, peer, tag, async);
      }, Release());

  // ---- topology and tuner (topo/): JSON strings and plain dicts; hcomm/topology.py wraps them.
  auto decisionDict = [](const Decision& d) {
    py::list cands;
    for (const Candidate& c : d.candidates) {
      py::dict x;
      x["algo"] = c.algo;
      x["seconds"] = c.seconds;
      x["seg_bytes"] = c.segBytes;
      x["inner"] = c.inner;
      x["inner_seg_bytes"] = c.innerSegBytes;
      x["applicable"] = c.applicable;
      x["measured"] = c.measured;
      cands.append(x);
    }
    py::dict out;
    out["candidates"] = cands;
    out["chosen"] = d.choice().algo;
    out["why"] = d.why;
    return out;
  };
  m.def("_comm_explain_allreduce", [decisionDict](Communicator& c, size_t nbytes, const std::string& algo) {
    return decisionDict(c.planAllreduce(nbytes, algo));
  });
  // How a SUM of `dtype` folds (the collectives' rule, comm/collectives.cc): explain per dtype.
  auto foldFor = [](const std::string& dtype, bool reduction) {
    DataType dt = parseDataType(dtype);
    if (!reduction || !orderedReduction(dt, ReduceOp::SUM)) return Fold::PLAIN;
    return dt == DataType::F16 || dt == DataType::BF16 ? Fold::ORDERED_WIDE : Fold::ORDERED;
  };
  // `device`: explain the calls on this communicator's device buffers (1), on host
  // buffers (0), or (-1) those its device engine makes when it has one (NCCL, HCCL),
  // else host ones. The dict's "memory" says which: "host", "cuda:N", "npu:N".
  m.def("_comm_explain", [decisionDict, foldFor](Communicator& c, const std::string& collective, size_t nbytes,
                                                 const std::string& algo, int root, const std::string& dtype,
                                                 int device) {
    Placement where = c.devicePlacement();
    std::string engine = c.deviceEngine();
    bool onDevice = device == 1 || (device < 0 && (engine == "nccl" || engine == "hccl"));
    if (onDevice && where.device < 0)
      throw Error("explain(device=True): this communicator has made no call on device buffers yet (its device, "
                  "routes and engine are set up at the first one)");
    if (!onDevice) where = Placement();
    PlacementScope scope(where);
    std::string memory = !onDevice ? std::string("host") : (where.npu ? "npu:" : "cuda:") + std::to_string(where.device);
    auto described = [&](const Decision& d) {
      py::dict out = decisionDict(d);
      out["memory"] = memory;
      return out;
    };
    Fold fold = foldFor(dtype, collective == "allreduce" || collective == "reduce" || collective == "reduce_scatter");
    if (collective == "gather" || collective == "scatter") return described(c.planGather(collective, nbytes, root, algo));
    if (collective == "alltoall") return described(c.planAlltoall(nbytes, true, algo));
    auto [kind, d] = collective == "broadcast"        ? std::make_pair(CollKind::BROADCAST, c.planBroadcast(nbytes, root, algo))
                     : collective == "allgather"      ? std::make_pair(CollKind::ALLGATHER, c.planAllgather(nbytes, algo))
                     : collective == "reduce_scatter" ? std::make_pair(CollKind::REDUCE_SCATTER, c.planReduceScatter(nbytes, algo, fold))
                     : collective == "reduce"         ? std::make_pair(CollKind::REDUCE, c.planReduce(nbytes, root, algo, fold))
                                                      : std::make_pair(CollKind::ALLREDUCE, c.planAllreduce(nbytes, algo, fold));
    if (onDevice) c.priceDeviceNative(d, kind, nbytes);  // the engine's own, as a device call prices it
    return described(d);
  });
  // Drift (topo/tuner_drift.h): the re-fits this communicator made, and the trigger rule
  // on its own: the index of the (predicted, measured) sample at which a key counts as
  // drifted, or -1 (process-free tests).
  m.def("_comm_drift_events", [](Communicator& c) { return c.drift().events(); });
  // The topology this communicator's tuner plans with: the job's, or its re-fitted copy.
  m.def("_comm_tuner_topology_json", [](Communicator& c) {
    auto t = c.tuner();
    if (!t) throw Error("communicator is closed");
    return t->topology().toJson().dump();
  });
  m.def("_drift_first_trigger", [](const std::vector<std::pair<double, double>>& samples) {
    DriftSettings s = DriftSettings::fromEnv();
    DriftKey key;
    for (size_t i = 0; i < samples.size(); ++i) {
      key.add(samples[i].first, samples[i].second, s);
      if (key.drifted(s)) return static_cast<int>(i);
    }
    return -1;
  });
  m.def("_comm_topology_json", [](Communicator& c) {
    auto t = c.topology();
    if (!t) throw Error("communicator is closed");
    return t->toJson().dump();
  });
  // A described topology and the ranks of the communicator to explain (all when empty).
  auto shapeOf = [](const std::string& topologyJson, std::vector<int> ranks) {
    Topology t = Topology::fromJson(Json::parse(topologyJson));
    if (ranks.empty())
      for (int r = 0; r < t.size(); ++r) ranks.push_back(r);
    for (int r : ranks)
      if (r < 0 || r >= t.size())
        throw Error("rank " + std::to_string(r) + " is not in the topology (" + std::to_string(t.size()) + " ranks)");
    return CommShape::of(t, ranks);
  };
  m.def("_explain_allreduce_on", [decisionDict, shapeOf](const std::string& topologyJson, size_t nbytes,
                                                         const std::string& algo, std::vector<int> ranks) {
    return decisionDict(tuneAllreduce(shapeOf(topologyJson, std::move(ranks)), nbytes, algo, "requested"));
  });
  m.def("_explain_on", [decisionDict, shapeOf, foldFor](const std::string& topologyJson, const std::string& collective,
                                                        size_t nbytes, const std::string& algo, std::vector<int> ranks,
                                                        int root, const std::string& dtype) {
    CommShape shape = shapeOf(topologyJson, std::move(ranks));
    Fold fold = foldFor(dtype, collective == "allreduce" || collective == "reduce" || collective == "reduce_scatter");
    if (collective == "broadcast") return decisionDict(tuneBroadcast(shape, nbytes, root, algo, "requested"));
    if (collective == "allgather") return decisionDict(tuneAllgather(shape, nbytes, algo, "requested"));
    if (collective == "reduce_scatter") return decisionDict(tuneReduceScatter(shape, nbytes, algo, "requested", fold));
    if (collective == "reduce") return decisionDict(tuneReduce(shape, nbytes, root, algo, "requested", fold));
    if (collective == "gather" || collective == "scatter")
      return decisionDict(tuneGather(shape, collective, nbytes, root, algo, "requested"));
    if (collective == "alltoall") return decisionDict(tuneAlltoall(shape, nbytes, true, algo, "requested"));
    return decisionDict(tuneAllreduce(shape, nbytes, algo, "requested", fold));
  });
  // refit() on a described topology: the link class re-fitted and its new (alpha, beta)
  // so that `algo`'s price for the call is `ratio` times today's; None when none can.
  m.def("_drift_refit_on", [shapeOf](const std::string& topologyJson, const std::string& collective, size_t nbytes,
                                     const std::string& algo, double ratio) -> py::object {
    CommShape shape = shapeOf(topologyJson, {});
    PlannedCall call{collective, algo, nbytes, 0, Fold::PLAIN, 0};
    call.predicted = tuneByName(shape, collective, nbytes, 0, Fold::PLAIN, algo).choice().seconds;
    LinkClass cls;
    LinkCost cost;
    if (!refit(shape, call, ratio * call.predicted, &cls, &cost)) return py::none();
    return py::make_tuple(linkClassName(cls), cost.alpha, cost.beta);
  });
  m.def("_racks_from_times", [](int hosts, const std::vector<double>& times) { return racksFromTimes(hosts, times); });
  m.def("_topology_from_json", [](const std::string& text) { return Topology::fromJson(Json::parse(text)).toJson().dump(); });
  m.def("_probe_local", [] { return probeToJson(probeLocal()); });
  m.def("_socket_cpu", [](size_t bytes, int sweeps) {
    py::gil_scoped_release release;
    SocketCpu c = measureSocketCpu(bytes, sweeps);
    return std::make_pair(c.send, c.recv);
  }, py::arg("bytes") = 8u << 20, py::arg("sweeps") = 3);
  m.def("_probe_sys", [](const std::string& sysRoot, const std::vector<int>& cpus) {
    RankProbe p;
    p.nics = readNics(sysRoot);
    p.numaNode = numaNodeOf(sysRoot, cpus);
    p.cpus = cpus;
    return probeToJson(p);
  });
  m.def("_parse_cpu_list", &parseCpuList);
  m.def("_deterministic", &deterministicMode);
  // The table of algorithm names (algo/names.h): {collective: [name, ...]}, aliases included.
  m.def("algorithms", [] {
    py::dict out;
    for (const AlgorithmName& a : algorithmTable()) {
      if (!out.contains(a.collective)) out[a.collective] = py::list();
      out[a.collective].cast<py::list>().append(a.name);
    }
    return out;
  });
}
