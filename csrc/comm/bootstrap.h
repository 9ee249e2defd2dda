// NCCL-style bootstrap. One process (whoever calls newUniqueId, or rank 0 listening on
// MASTER_PORT) runs a root that listens; its address plus a random job token make the
// *unique id*, handed to every rank out of band (env var, a torch store, MPI). Each rank
// connects to the root, proves it knows the token, and sends a small record about
// itself; when all ranks have checked in, the root returns every record to everyone.
#pragma once
#include <string>
#include <vector>

namespace hcomm {

struct UniqueId {
  std::string host;
  int port = 0;
  std::string token;  // 32 hex characters
  std::string str() const;
  static UniqueId parse(const std::string& s);  // throws Error naming the bad id
};

// Starts a root on a fresh port (on the chosen interface) in a background thread of
// this process, serving one rendezvous; returns its id.
UniqueId newUniqueId(double timeoutSec);
// Starts a root listening on host:port (e.g. rank 0 on MASTER_ADDR:MASTER_PORT).
UniqueId startRootAt(const std::string& host, int port, const std::string& token, double timeoutSec);
std::string randomToken();

// Sends this rank's record to the root and returns all `size` records, by rank.
std::vector<std::string> rendezvous(const UniqueId& id, int rank, int size, const std::string& record,
                                    double timeoutSec);

}  // namespace hcomm
