// MPI: a point-to-point transport over MPI_Isend / MPI_Irecv, and the MPI communicators
// the "native" algorithm (algo/native_mpi.h) hands whole collectives to.
//
// Joining MPI. A rank joins when HCOMM_MPI=1, or when something asks for MPI
// (HCOMM_TRANSPORT names mpi, HCOMM_ALGO names native), or by default (HCOMM_MPI=auto)
// when launched by mpirun / srun with MPI or when MPI is already initialised (mpi4py);
// HCOMM_MPI=0 never joins. MPI is initialised once per process with MPI_Init_thread
// asking for MPI_THREAD_MULTIPLE, unless someone already did (then hcomm never
// finalises it; when hcomm did, it finalises at process exit, as mpirun requires). With
// less than MULTIPLE granted every MPI call hcomm makes is serialised by one lock (what
// SERIALIZED asks; FUNNELED is treated alike, since hcomm's progress thread calls MPI
// too). Each rank puts its MPI identity in its bootstrap record; the job's MPI
// communicator (MPI_Comm_create_group over the members, ordered by hcomm rank, so a
// torch sub-group works too) exists only when every rank has one in the same MPI job.
//
// Which links use it: HCOMM_TRANSPORT (comm/world.h), e.g. `mpi` (every peer), `inter:mpi`
// (other hosts; shared memory within a host), `intra:mpi` (this host, tcp between).
// Other knobs: HCOMM_MPI_PIECE_BYTES (512 KiB: the size of one MPI message of a payload;
// the same on every rank) and HCOMM_NATIVE_BYTES (comm/communicator.cc: the sizes at
// which the tuner hands allreduce to MPI unasked).
//
// Device buffers. When the MPI library is CUDA-aware, the transport takes device
// pointers as they are (canConnect(peer, DEVICE)), so device buffers to the peers MPI
// carries skip host staging; a reducing receive then stages its pieces in device memory
// and reduces them with the call's device Memory. HCOMM_MPI_CUDA_AWARE says whether it is:
// 1 / 0, or auto (default): the library's own answer, Open MPI's MPIX_Query_cuda_support()
// (mpi-ext.h), looked up at run time in the libmpi actually loaded, "no" when it has
// none (MPICH and others: set 1 where the library is built with CUDA). The ranks agree
// when the transport is made (an MPI_Allreduce of their answers, MIN): direct only when
// every rank says yes, since both ends of a link must cut its messages the same way.
//
// Files that include this header need no <mpi.h>: the MPI objects are opaque here and
// defined in transport/mpi_impl.h. Built without MPI (HCOMM_WITH_MPI=0), every rank's
// identity is "-", and asking for MPI raises an Error that says so.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "transport/transport.h"

namespace hcomm {

class MpiComm;
using MpiCommPtr = std::shared_ptr<MpiComm>;

// This rank's MPI identity for the bootstrap record ("rank/size@job"), or "-" when it
// does not join MPI. required: MPI was asked for, so failing to join raises.
std::string mpiIdentity(bool required);
// The MPI communicator of the ranks whose identities are given (by hcomm rank), or
// nullptr when some rank has none or they are not one MPI job (an Error if required).
// Collective over those ranks.
MpiCommPtr mpiCommFor(const std::vector<std::string>& identities, bool required);
// MPI_Comm_split of `parent` (collective over it): nullptr for a negative color.
MpiCommPtr mpiSplit(const MpiComm& parent, int color, int key);
// The transport over a duplicate of `comm` (collective over it); peer = rank in comm.
std::shared_ptr<Transport> makeMpiTransport(const MpiCommPtr& comm, double timeoutSec);

}  // namespace hcomm
