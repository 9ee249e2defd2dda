// Host identity: ranks with the same identity share memory. Built from the boot id,
// the hostname and the network namespace, so ranks in separate network namespaces on
// one machine count as separate hosts (that is how multi-host runs are simulated).
#pragma once
#include <string>

namespace hcomm {

// The kernel this process runs on (its boot id): ranks with the same one share CPUs,
// whatever host a topology file or HCOMM_HOST_ID says they simulate.
std::string machineIdentity();
std::string hostIdentity();  // HCOMM_HOST_ID overrides (for tests and odd containers)
std::string hostName();

}  // namespace hcomm
