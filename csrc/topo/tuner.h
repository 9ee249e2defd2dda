// The cost-model tuner: predicts each allreduce algorithm's time on a communicator
// from the alpha-beta-gamma model and picks the smallest (NCCL's tuning.cc idea, with
// the topology's link classes instead of fixed tables).
//
// Model: a step in which a set of ranks each send `b` bytes to a partner costs
//   max over the transfers of  alpha(class) + b * beta(class) * load
// where load counts the transfers that leave (or enter) the same host in that step:
// a host's NIC is shared by every rank on it, which is exactly what hierarchical
// allreduce saves (2 hosts x 2 ranks: flat ring puts 1.5 S through each NIC, the
// hierarchical inter-host ring 1.0 S). Reductions cost gamma per byte; pipelined
// algorithms overlap them with the wire. Each algorithm's step list follows the cost
// comment at the top of its file (algo/*.cc).
#pragma once
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "topo/topology.h"

namespace hcomm {

// The part of the topology a communicator's tuner needs: its ranks' hosts and racks
// (dense indices) and the link costs.
struct CommShape {
  int n = 1;
  std::vector<int> host, rack;
  // GPU domain (dense over this communicator, nested in host), or -1 for a rank
  // without a GPU: two ranks of one domain talk over the nvlink link class.
  std::vector<int> domain;
  LinkCost links[kLinkClasses];
  // A machine (hostname) holding some of these ranks runs more of the job's ranks than
  // it has CPUs (namespaces or a topology file can put several simulated hosts on one).
  bool oversubscribed = false;
  // When every CPU of such a machine is shared by two ranks or more, each dependent wait
  // of an algorithm outlasts the spin and yields and sleeps; a sleep wakes up to one
  // slice late (algo/links.cc). Charged per step (tuner_steps.cc); else 0.
  double lateWake = 0;
  double wakeSlice = 0;  // what lateWake is when it applies
  // The CPU a rank gets while every rank of its machine works at once: CPUs over ranks
  // on the busiest machine holding these ranks, at most 1. Local passes (reductions,
  // shared-memory copies) run at this share of the one-rank speed that gamma and the
  // probe (one pair at a time, the others idle) measure (tuner_steps.cc).
  double cpuShare = 1;
  // Per rank, its machine (dense), or -1 when the probe records do not tell (described
  // topologies); per machine its CPUs and the job's ranks on it outside this communicator
  // (counted busy). Phase shares (activeShare) come from these.
  std::vector<int> machine;
  std::vector<int> machineCpus, machineOutside;

  static CommShape of(const Topology& t, const std::vector<int>& worldRanks);
  // The CPU share while only `active` ranks of this communicator work (`copies` copies of
  // the pattern at once, on as many other ranks of each machine): a phase in which the
  // other members wait (asleep after their spins and yields) leaves them the CPUs.
  // CPUs over busy ranks on the busiest machine, at most 1.
  double activeShare(const std::vector<int>& active, int copies = 1) const;
  // This shape with cpuShare (and the late wake-up, which needs every CPU shared by two
  // ranks or more) set for a phase in which only `active` (x copies) work.
  CommShape duringPhase(const std::vector<int>& active, int copies = 1) const;
  // What a phase with `busy` of the n members at work costs the others when a machine
  // holds more ranks than CPUs: they sleep through it (their CPUs go to the busy ones)
  // and wake up to one sleep slice late for the next phase. 0 when all are busy or a
  // CPU is left for every rank (a waiting rank then keeps spinning on its own).
  double idleWake(int busy) const { return oversubscribed && busy < n ? wakeSlice : 0; }
  int hosts() const;
  // Groups per level for hierarchical algorithms: the GPU domain (only when some host
  // holds more than one), then host, then rack (only when there are several racks).
  // levels[k][r] is rank r's group at level k.
  std::vector<std::vector<int>> levels() const;
  // levels()'s innermost level when some host of this communicator holds two or more
  // GPU domains (ranks without a GPU count as one more group of their host); else empty.
  std::vector<int> domainLevel() const;
};

struct Candidate {
  std::string algo;        // ring, tree, halving_doubling, hierarchical
  double seconds = 0;      // predicted
  size_t segBytes = 0;     // chosen segment (0: the algorithm has none)
  std::string inner;       // hierarchical: the flat algorithm among group leaders
  size_t innerSegBytes = 0;
  bool applicable = true;  // hierarchical on one host is just the flat algorithm
  double measured = -1;    // seconds this communicator's recent calls took (drift), or -1
};

struct Decision {
  std::vector<Candidate> candidates;
  int chosen = 0;           // index into candidates
  std::string why;          // "model", "HCOMM_ALGO", "requested"
  const Candidate& choice() const { return candidates.at(chosen); }
};

// How a reduction's arithmetic runs (algo/ordered.cc): PLAIN, partials combined pairwise
// as the algorithm meets them; ORDERED, the rank-order fold at each block's owner with a
// partial of the dtype (HCOMM_DETERMINISTIC=1); ORDERED_WIDE, the same fold with float32
// partials of a 16-bit dtype (twice the bytes through the reduction kernel).
enum class Fold { PLAIN, ORDERED, ORDERED_WIDE };

// The candidates the model prices, from the table of names (algo/names.h) less "native",
// which planning adds where MPI is present.
const std::vector<std::string>& allreduceAlgorithms();
const std::vector<std::string>& broadcastAlgorithms();      // "tree" is accepted for binomial
const std::vector<std::string>& allgatherAlgorithms();
const std::vector<std::string>& reduceScatterAlgorithms();
const std::vector<std::string>& reduceAlgorithms();         // "tree" is accepted for binomial
const std::vector<std::string>& gatherAlgorithms();         // gather and scatter: linear, binomial
const std::vector<std::string>& alltoallAlgorithms();       // pairwise, bruck
// The reduction kernel's cost per byte on one whole core (HCOMM_GAMMA).
double gammaSecondsPerByte();

// Every candidate with its prediction; `forced` (an algorithm name, or "" / "auto")
// overrides the model's pick. Throws Error naming the valid names for an unknown one.
Decision tuneAllreduce(const CommShape& shape, size_t bytes, const std::string& forced, const std::string& why,
                       Fold fold = Fold::PLAIN);
// root: a rank of `shape` (the flat binomial tree's shape depends on where it sits).
Decision tuneBroadcast(const CommShape& shape, size_t bytes, int root, const std::string& forced,
                       const std::string& why);
// bytes: the gathered total (allgatherv with unequal counts is modelled as equal blocks).
Decision tuneAllgather(const CommShape& shape, size_t bytes, const std::string& forced, const std::string& why);
// bytes: the whole input (every block); reduce_scatterv is modelled as equal blocks.
Decision tuneReduceScatter(const CommShape& shape, size_t bytes, const std::string& forced, const std::string& why,
                           Fold fold = Fold::PLAIN);
Decision tuneReduce(const CommShape& shape, size_t bytes, int root, const std::string& forced, const std::string& why,
                    Fold fold = Fold::PLAIN);
// gather or scatter (the same tree either way); bytes: one rank's block.
Decision tuneGather(const CommShape& shape, const std::string& collective, size_t bytes, int root,
                    const std::string& forced, const std::string& why);

// alltoall(v); bytes: what one rank sends in all. even: every block has the same count
// and sits in rank order (alltoall, not a ragged alltoallv): Bruck needs it.
Decision tuneAlltoall(const CommShape& shape, size_t bytes, bool even, const std::string& forced,
                      const std::string& why);

// MPI's own collectives as measured at init (algo/native_mpi_probe.cc): the native
// candidate's price, equal on every rank. Fitted on the job's `ranks`; a communicator of
// m ranks scales alpha by log2(m)/log2(ranks) (MPI's latency-bound algorithms are trees
// and dissemination) and keeps beta (its bandwidth-bound ones move about the same bytes
// per rank at any size).
struct NativeCosts {
  int ranks = 0;
  std::map<std::string, LinkCost> byCollective;
  // Predicted seconds, or a negative number when `collective` was not measured.
  double seconds(const std::string& collective, double bytes, int n) const;
};

// The tuner of one job: decisions cached per (communicator ranks, bytes, forced name), so
// the model runs once per message size and a small collective pays a map lookup.
class Tuner {
 public:
  explicit Tuner(std::shared_ptr<const Topology> topology, std::shared_ptr<const NativeCosts> native = nullptr)
      : topology_(std::move(topology)), native_(std::move(native)) {}
  const Topology& topology() const { return *topology_; }
  // MPI's measured costs, or null when the job has no MPI (or HCOMM_NATIVE_PROBE=0).
  const NativeCosts* native() const { return native_.get(); }
  // The same tuner over a copy of the topology with one link class re-fitted (drift).
  std::shared_ptr<const Tuner> withLink(LinkClass c, const LinkCost& cost) const;
  Decision allreduce(const std::vector<int>& worldRanks, size_t bytes, const std::string& forced,
                     const std::string& why, Fold fold = Fold::PLAIN) const;
  Decision broadcast(const std::vector<int>& worldRanks, size_t bytes, int root, const std::string& forced,
                     const std::string& why) const;
  Decision allgather(const std::vector<int>& worldRanks, size_t bytes, const std::string& forced,
                     const std::string& why) const;
  Decision reduceScatter(const std::vector<int>& worldRanks, size_t bytes, const std::string& forced,
                         const std::string& why, Fold fold) const;
  Decision reduce(const std::vector<int>& worldRanks, size_t bytes, int root, const std::string& forced,
                  const std::string& why, Fold fold) const;
  Decision gather(const std::vector<int>& worldRanks, const std::string& collective, size_t bytes, int root,
                  const std::string& forced, const std::string& why) const;
  Decision alltoall(const std::vector<int>& worldRanks, size_t bytes, bool even, const std::string& forced,
                    const std::string& why) const;

 private:
  // (collective, ranks, bytes, root (allreduce, reduce_scatter: the Fold; reduce: 3*root + Fold), forced, why)
  using Key = std::tuple<std::string, std::vector<int>, size_t, int, std::string, std::string>;
  Decision cached(Key key, const std::function<Decision(const CommShape&)>& tune) const;
  std::shared_ptr<const Topology> topology_;
  std::shared_ptr<const NativeCosts> native_;
  mutable std::mutex mu_;
  mutable std::map<Key, Decision> cache_;
};

}  // namespace hcomm
