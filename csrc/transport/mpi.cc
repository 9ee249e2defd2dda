#include "transport/mpi.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <sstream>
#include <thread>

#include <dlfcn.h>
#include <unistd.h>

#include "common/param.h"
#include "reduce/memory.h"
#include "reduce/reduce.h"
#include "topo/host.h"
#include "transport/mpi_impl.h"

namespace hcomm {

namespace {

constexpr int kHeaderTag = 0;
constexpr int kCreateGroupTag = 0x68636d;  // MPI_Comm_create_group's own traffic
constexpr size_t kSlots = 2;  // staged pieces in flight per reducing receive

// MPI's "inoutvec = invec op inoutvec", by hcomm's kernels, for types MPI lacks.
template <DataType D, ReduceOp O>
void halfReduce(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce(D, O, inout, inout, in, static_cast<size_t>(*len));
}

bool launchedByMpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
    if (!envStr(v).empty()) return true;
  return false;
}

bool mpiInitialized() {
  int init = 0;
  MPI_Initialized(&init);
  return init != 0;
}

// Tells one MPI job from another, so that two mpirun jobs (or two singletons) that
// met through the TCP bootstrap never try to share an MPI communicator.
std::string jobKey() {
  for (const char* v : {"PMIX_NAMESPACE", "OMPI_MCA_orte_ess_jobid", "OMPI_MCA_ess_base_jobid"}) {
    std::string s = envStr(v);
    if (!s.empty()) return s;
  }
  return "singleton:" + hostIdentity() + ":" + std::to_string(getpid());
}

struct Identity {
  int rank = -1, size = 0;
  std::string job;
};

bool parseIdentity(const std::string& s, Identity* id) {
  auto slash = s.find('/'), at = s.find('@');
  if (slash == std::string::npos || at == std::string::npos || at < slash) return false;
  try {
    id->rank = std::stoi(s.substr(0, slash));
    id->size = std::stoi(s.substr(slash + 1, at - slash - 1));
  } catch (const std::exception&) {
    return false;
  }
  id->job = s.substr(at + 1);
  return true;
}

// Why the identities cannot form one MPI communicator; empty when they can.
std::string whyNoMpiComm(const std::vector<std::string>& ids, std::vector<int>* mpiRanks) {
  std::vector<Identity> all(ids.size());
  for (size_t r = 0; r < ids.size(); ++r)
    if (!parseIdentity(ids[r], &all[r]))
      return "rank " + std::to_string(r) + " did not join MPI (launch with mpirun, or set HCOMM_MPI=1 there)";
  std::set<int> seen;
  for (size_t r = 0; r < ids.size(); ++r) {
    if (all[r].job != all[0].job || all[r].size != all[0].size)
      return "ranks 0 and " + std::to_string(r) + " belong to different MPI jobs (" + all[0].job + ", " + all[r].job +
             ")";
    if (!seen.insert(all[r].rank).second)
      return "two ranks share MPI rank " + std::to_string(all[r].rank) + " (separate MPI singletons?)";
    mpiRanks->push_back(all[r].rank);
  }
  return "";
}

// What the loaded libmpi says of CUDA: Open MPI's MPIX_Query_cuda_support() (mpi-ext.h),
// looked up at run time in the library MPI_Init came from, since the header hcomm was
// built against may belong to a build without CUDA (this machine's) while the library
// at run time has it. False when the library has no such function.
bool libraryCudaAware() {
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&MPI_Init), &info) || !info.dli_fname) return false;
  void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (!lib) return false;
  auto query = reinterpret_cast<int (*)()>(dlsym(lib, "MPIX_Query_cuda_support"));
  bool aware = query && query() == 1;
  dlclose(lib);
  return aware;
}

// HCOMM_MPI_CUDA_AWARE (transport/mpi.h): this rank's view.
bool cudaAwareHere() {
  std::string v = envStr("HCOMM_MPI_CUDA_AWARE", "auto");
  if (v == "1") return true;
  if (v == "0") return false;
  if (v != "auto") throw Error("HCOMM_MPI_CUDA_AWARE must be 0, 1 or auto, got '" + v + "'");
  return libraryCudaAware();
}

// A piece of a reducing receive lands: reduced into the destination with the receive's
// Memory when that is a device (the piece is in device memory then), else deliver().
void deliverPiece(const PostedRecv& r, size_t off, const char* piece, size_t len) {
  const Memory* mem = r.spec.memory;
  if (!mem || mem->device() < 0 || r.spec.accumulate.on) return r.deliver(off, piece, len);  // accumulate: Memory too
  mem->reduce(r.spec.dtype, r.spec.op, r.dst + off, static_cast<const char*>(r.spec.src) + off, piece,
              len / dtypeSize(r.spec.dtype), r.spec.streamed);
}

}  // namespace

// ---------------------------------------------------------------- runtime

bool mpiFinalized() {
  int fin = 0;
  MPI_Finalized(&fin);
  return fin != 0;
}

void mpiCheck(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(std::string(what) + " failed: " + std::string(msg, static_cast<size_t>(len)));
}

MpiRuntime& MpiRuntime::instance() {
  static MpiRuntime rt;  // thread-safe; MPI_Finalize at exit if hcomm initialised MPI
  return rt;
}

MpiRuntime::MpiRuntime() {
  if (mpiFinalized()) throw Error("MPI was already finalized in this process; hcomm cannot use it");
  int provided = MPI_THREAD_SINGLE;
  if (!mpiInitialized()) {
    mpiCheck(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
    ownsInit_ = true;
  } else {
    MPI_Query_thread(&provided);
  }
  serialize_ = provided < MPI_THREAD_MULTIPLE;
  int* ub = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
  if (flag && ub) tagUb_ = *ub;
  MPI_Type_contiguous(2, MPI_BYTE, &half_);
  MPI_Type_commit(&half_);
  MPI_User_function* fns[2][4] = {
      {halfReduce<DataType::F16, ReduceOp::SUM>, halfReduce<DataType::F16, ReduceOp::PROD>,
       halfReduce<DataType::F16, ReduceOp::MIN>, halfReduce<DataType::F16, ReduceOp::MAX>},
      {halfReduce<DataType::BF16, ReduceOp::SUM>, halfReduce<DataType::BF16, ReduceOp::PROD>,
       halfReduce<DataType::BF16, ReduceOp::MIN>, halfReduce<DataType::BF16, ReduceOp::MAX>}};
  for (int t = 0; t < 2; ++t)
    for (int o = 0; o < 4; ++o) MPI_Op_create(fns[t][o], 1, &halfOps_[t][o]);
}

MpiRuntime::~MpiRuntime() {
  // Runs at process exit. Whoever initialised MPI finalises it: mpirun reports a rank
  // that exits without MPI_Finalize as failed.
  if (ownsInit_ && !mpiFinalized()) MPI_Finalize();
}

MPI_Op MpiRuntime::halfOp(DataType dt, ReduceOp op) const {
  int o = static_cast<int>(op);
  if ((dt != DataType::F16 && dt != DataType::BF16) || o > static_cast<int>(ReduceOp::MAX))
    throw Error(std::string("no MPI reduction for ") + dtypeName(dt) + " " + opName(op));
  return halfOps_[dt == DataType::BF16][o];
}

MpiComm::MpiComm(MPI_Comm c) : comm_(c) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiComm::~MpiComm() {
  if (mpiFinalized()) return;  // mpi4py finalises at interpreter exit, before our objects go
  auto lock = MpiRuntime::instance().guard();
  MPI_Comm_free(&comm_);
}

// ---------------------------------------------------------------- joining

std::string mpiIdentity(bool required) {
  std::string mode = envStr("HCOMM_MPI", "auto");
  if (mode != "0" && mode != "1" && mode != "auto")
    throw Error("HCOMM_MPI must be 0, 1 or auto, got '" + mode + "'");
  if (mode == "0") {
    if (required) throw Error("HCOMM_MPI=0, but HCOMM_TRANSPORT or HCOMM_ALGO asks for MPI");
    return "-";
  }
  if (!required && mode == "auto" && !launchedByMpi() && !mpiInitialized()) return "-";
  MpiRuntime::instance();
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return std::to_string(rank) + "/" + std::to_string(size) + "@" + jobKey();
}

MpiCommPtr mpiCommFor(const std::vector<std::string>& identities, bool required) {
  std::vector<int> ranks;
  std::string why = whyNoMpiComm(identities, &ranks);
  if (!why.empty()) {
    if (required) throw Error("MPI was asked for (HCOMM_TRANSPORT / HCOMM_ALGO / HCOMM_MPI) but " + why);
    return nullptr;
  }
  auto lock = MpiRuntime::instance().guard();
  MPI_Group world, group;
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  MPI_Group_incl(world, static_cast<int>(ranks.size()), ranks.data(), &group);
  int rc = MPI_Comm_create_group(MPI_COMM_WORLD, group, kCreateGroupTag, &comm);
  MPI_Group_free(&group);
  MPI_Group_free(&world);
  mpiCheck(rc, "MPI_Comm_create_group");
  return std::make_shared<MpiComm>(comm);
}

MpiCommPtr mpiSplit(const MpiComm& parent, int color, int key) {
  auto lock = MpiRuntime::instance().guard();
  MPI_Comm comm = MPI_COMM_NULL;
  mpiCheck(MPI_Comm_split(parent.get(), color < 0 ? MPI_UNDEFINED : color, key, &comm), "MPI_Comm_split");
  if (comm == MPI_COMM_NULL) return nullptr;
  return std::make_shared<MpiComm>(comm);
}

std::shared_ptr<Transport> makeMpiTransport(const MpiCommPtr& comm, double timeoutSec) {
  if (!comm) throw Error("mpi transport: no MPI communicator");
  return std::make_shared<MpiTransport>(*comm, timeoutSec);
}

// ---------------------------------------------------------------- transport

MpiTransport::MpiTransport(const MpiComm& comm, double timeoutSec) : timeoutSec_(timeoutSec) {
  int mine = cudaAwareHere() ? 1 : 0;  // a bad setting raises before any MPI call
  auto& rt = MpiRuntime::instance();
  auto lock = rt.guard();
  mpiCheck(MPI_Comm_dup(comm.get(), &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  tagUb_ = rt.tagUb();
  // MPI counts are ints, so a piece stays below 2 GiB.
  piece_ = static_cast<size_t>(std::min<int64_t>(std::max<int64_t>(envInt("HCOMM_MPI_PIECE_BYTES", 512 << 10), 4096),
                                                 int64_t(1) << 30));
  match_.resize(static_cast<size_t>(size_));
  sendSeq_.assign(static_cast<size_t>(size_), 0);
  int all = 0;
  mpiCheck(MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce (HCOMM_MPI_CUDA_AWARE)");
  cudaAware_ = all == 1;
  mpiCheck(MPI_Irecv(&inHdr_, sizeof(Header), MPI_BYTE, MPI_ANY_SOURCE, kHeaderTag, comm_, &hdrReq_), "MPI_Irecv");
}

MpiTransport::~MpiTransport() {
  if (mpiFinalized()) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto g = MpiRuntime::instance().guard();
  MPI_Cancel(&hdrReq_);
  MPI_Wait(&hdrReq_, MPI_STATUS_IGNORE);
  for (auto& op : ops_) cancel(*op);
  MPI_Comm_free(&comm_);
}

void MpiTransport::cancel(Op& op) {
  // Receives are cancelled and waited for, so MPI never writes into memory that is gone;
  // sends are let go (MPI finishes them if the peer ever receives).
  bool isSend = op.req && op.req->isSend;
  for (MPI_Request& r : op.mpi) {
    if (r == MPI_REQUEST_NULL) continue;
    if (isSend) {
      MPI_Request_free(&r);
    } else {
      MPI_Cancel(&r);
      MPI_Wait(&r, MPI_STATUS_IGNORE);
    }
  }
}

void MpiTransport::checkPeer(int peer) const {
  if (peer < 0 || peer >= size_)
    throw Error("mpi transport: no rank " + std::to_string(peer) + " among " + std::to_string(size_));
}

RequestPtr MpiTransport::isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) {
  std::lock_guard<std::mutex> lock(mu_);
  checkPeer(peer);
  RequestPtr req = makeRequest(peer, tag, nbytes, true, fingerprint);
  if (!aborted_.empty()) {
    complete(*req, aborted_);
    return req;
  }
  std::unique_ptr<Op> op(new Op);
  op->req = req;
  op->hdr = {tag, nbytes, fingerprint, sendSeq_[peer]++};
  auto g = MpiRuntime::instance().guard();
  op->mpi.push_back(MPI_REQUEST_NULL);
  mpiCheck(MPI_Isend(&op->hdr, sizeof(Header), MPI_BYTE, peer, kHeaderTag, comm_, &op->mpi.back()), "MPI_Isend");
  const char* p = static_cast<const char*>(buf);
  for (size_t off = 0; off < nbytes; off += piece_) {
    op->mpi.push_back(MPI_REQUEST_NULL);
    int len = static_cast<int>(std::min(piece_, nbytes - off));
    mpiCheck(MPI_Isend(p + off, len, MPI_BYTE, peer, dataTag(op->hdr.seq), comm_, &op->mpi.back()), "MPI_Isend");
  }
  ops_.push_back(std::move(op));
  return req;
}

RequestPtr MpiTransport::irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                               uint64_t fingerprint) {
  std::lock_guard<std::mutex> lock(mu_);
  checkPeer(peer);
  PostedRecv r = postedRecv(peer, tag, buf, nbytes, reduce, fingerprint);
  if (!aborted_.empty()) {
    complete(*r.req, aborted_);
    return r.req;
  }
  UnexpectedPtr u = match_[peer].takeUnexpected(tag);
  if (!u) {
    match_[peer].posted.push_back(r);
    return r.req;
  }
  Header h{u->tag, u->nbytes, u->fingerprint, u->seq};
  std::string why = mismatch(peer, tag, u->nbytes, u->fingerprint, *r.req);
  if (!why.empty()) complete(*r.req, why);
  postPayload(peer, h, r, !why.empty());
  return r.req;
}

void MpiTransport::postPayload(int peer, const Header& h, PostedRecv r, bool drain) {
  if (h.nbytes == 0) {
    if (!drain) complete(*r.req);
    return;
  }
  std::unique_ptr<Op> op(new Op);
  op->req = drain ? nullptr : r.req;
  op->recv = r;
  op->recv.nbytes = h.nbytes;
  op->peer = peer;
  op->hdr = h;
  op->pieces = (h.nbytes + piece_ - 1) / piece_;
  op->staged = drain || r.reducing;
  if (op->staged) {
    size_t slots = std::min(kSlots, op->pieces);
    // Device memory for a device receive (CUDA-aware MPI writes it there); it is reduced
    // with the receive's Memory (synchronous, so a slot is free again when it returns).
    const Memory* mem = !drain && r.spec.memory ? r.spec.memory : &hostMemory();
    op->stage = mem->alloc(slots * piece_);
    op->mpi.assign(slots, MPI_REQUEST_NULL);
    op->slotPiece.assign(slots, 0);
    for (size_t s = 0; s < slots; ++s) postPiece(*op, s);
  } else {
    auto g = MpiRuntime::instance().guard();
    for (size_t off = 0; off < h.nbytes; off += piece_) {
      op->mpi.push_back(MPI_REQUEST_NULL);
      int len = static_cast<int>(std::min(piece_, static_cast<size_t>(h.nbytes) - off));
      mpiCheck(MPI_Irecv(r.dst + off, len, MPI_BYTE, peer, dataTag(h.seq), comm_, &op->mpi.back()), "MPI_Irecv");
    }
  }
  ops_.push_back(std::move(op));
}

// Posts the next piece of a staged receive into `slot`.
void MpiTransport::postPiece(Op& op, size_t slot) {
  size_t k = op.posted++, off = k * piece_;
  int len = static_cast<int>(std::min(piece_, op.recv.nbytes - off));
  op.slotPiece[slot] = k;
  auto g = MpiRuntime::instance().guard();
  mpiCheck(MPI_Irecv(op.stage.get() + slot * piece_, len, MPI_BYTE, op.peer, dataTag(op.hdr.seq), comm_,
                     &op.mpi[slot]),
           "MPI_Irecv");
}

// Combines each landed piece into dst and reuses its slot for the next; true when done.
bool MpiTransport::finishStaged(Op& op) {
  bool live = !op.req || !op.req->done.load(std::memory_order_acquire);  // aborted: only reap
  for (size_t s = 0; s < op.mpi.size(); ++s) {
    if (op.mpi[s] == MPI_REQUEST_NULL) continue;
    int flag = 0, rc;
    {
      auto g = MpiRuntime::instance().guard();
      rc = MPI_Test(&op.mpi[s], &flag, MPI_STATUS_IGNORE);
    }
    if (rc != MPI_SUCCESS && op.req && live) {
      complete(*op.req, "MPI failed a transfer from rank " + std::to_string(op.peer));
      live = false;
    }
    if (!flag && rc == MPI_SUCCESS) continue;
    ++op.landed;
    size_t off = op.slotPiece[s] * piece_;
    if (live && op.req) deliverPiece(op.recv, off, op.stage.get() + s * piece_, std::min(piece_, op.recv.nbytes - off));
    if (live && op.posted < op.pieces) postPiece(op, s);
  }
  for (MPI_Request& r : op.mpi)
    if (r != MPI_REQUEST_NULL) return false;
  if (live && op.req) complete(*op.req);
  return true;
}

void MpiTransport::onHeader(int peer, const Header& h) {
  PostedRecv r;
  if (match_[peer].takePosted(h.tag, &r)) {
    std::string why = mismatch(peer, h.tag, h.nbytes, h.fingerprint, *r.req);
    if (!why.empty()) complete(*r.req, why);
    postPayload(peer, h, r, !why.empty());
    return;
  }
  auto u = std::make_shared<Unexpected>();
  u->tag = h.tag;
  u->nbytes = h.nbytes;
  u->fingerprint = h.fingerprint;
  u->seq = h.seq;
  u->complete = true;
  match_[peer].unexpected.push_back(u);
}

bool MpiTransport::pollHeaders() {
  bool moved = false;
  while (true) {
    int flag = 0;
    MPI_Status st;
    Header h;
    {
      auto g = MpiRuntime::instance().guard();
      mpiCheck(MPI_Test(&hdrReq_, &flag, &st), "MPI_Test");
      if (!flag) break;
      h = inHdr_;
      mpiCheck(MPI_Irecv(&inHdr_, sizeof(Header), MPI_BYTE, MPI_ANY_SOURCE, kHeaderTag, comm_, &hdrReq_),
               "MPI_Irecv");
    }
    onHeader(st.MPI_SOURCE, h);
    moved = true;
  }
  return moved;
}

bool MpiTransport::finish(Op& op) {
  if (op.staged) return finishStaged(op);
  int flag = 0;
  int rc;
  {
    auto g = MpiRuntime::instance().guard();
    rc = MPI_Testall(static_cast<int>(op.mpi.size()), op.mpi.data(), &flag, MPI_STATUSES_IGNORE);
  }
  if (rc == MPI_SUCCESS && !flag) return false;
  if (!op.req || op.req->done.load(std::memory_order_acquire)) return true;  // drained, or aborted
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING] = {0};
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    complete(*op.req, "MPI failed a transfer with rank " + std::to_string(op.req->peer) + ": " +
                          std::string(msg, static_cast<size_t>(len)));
    return true;
  }
  complete(*op.req);
  return true;
}

bool MpiTransport::progress() {
  std::lock_guard<std::mutex> lock(mu_);
  bool moved = aborted_.empty() && pollHeaders();
  for (auto it = ops_.begin(); it != ops_.end();) {
    if (finish(**it)) {
      it = ops_.erase(it);
      moved = true;
    } else {
      ++it;
    }
  }
  return moved;
}

void MpiTransport::sleepFor(int us) {
  // MPI moves bytes only inside MPI calls and offers no wait with a timeout, so a
  // waiting rank naps briefly and polls again rather than sleeping the full slot.
  std::this_thread::sleep_for(std::chrono::microseconds(std::min(us, 50)));
}

bool MpiTransport::probe(int peer, uint64_t tag, size_t* nbytes) {
  std::lock_guard<std::mutex> lock(mu_);
  checkPeer(peer);
  if (aborted_.empty()) pollHeaders();
  const Unexpected* u = match_[peer].peekUnexpected(tag);
  if (u && nbytes) *nbytes = u->nbytes;
  return u != nullptr;
}

std::string MpiTransport::peerFailure(int peer) {
  (void)peer;
  std::lock_guard<std::mutex> lock(mu_);
  return aborted_;
}

void MpiTransport::abort(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = why;
  for (auto& m : match_) {
    for (auto& r : m.posted) complete(*r.req, why);
    m.posted.clear();
  }
  // Completed now; their MPI receives are cancelled so that no buffer of the failed
  // call is written later, and progress() reaps them.
  auto g = MpiRuntime::instance().guard();
  for (auto& op : ops_) {
    if (op->req && !op->req->done.load(std::memory_order_acquire)) complete(*op->req, why);
    if (!(op->req && op->req->isSend))
      for (MPI_Request& r : op->mpi)
        if (r != MPI_REQUEST_NULL) MPI_Cancel(&r);
  }
}

}  // namespace hcomm
