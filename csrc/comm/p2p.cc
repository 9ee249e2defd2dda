// Point to point: blocking calls run as turns of the engine; async ones are posted to
// the transport at once and completed by the progress thread (engine.cc, pollP2p).
#include "comm/engine.h"

namespace hcomm {

WorkPtr Communicator::send(const void* buf, size_t nbytes, int peer, int64_t tag, bool async) {
  checkUsable();
  checkRoot(peer, "peer");
  if (tag < 0 || tag > kMaxUserTag) throw Error("tag must be in [0, 2^31), got " + std::to_string(tag));
  CollectiveInfo info{"send", CollKind::NONE, DataType::U8, nbytes, peer, "", ReduceOp::SUM, tag};
  if (async && !currentPlacement().onDevice()) {  // device p2p runs as a turn (device routes)
    const Route& r = routes_[peer];
    return postP2p(info, r.transport->isend(r.peer, p2pTag(id_, tag), buf, nbytes), nullptr, nbytes,
                   p2pTag(id_, tag));
  }
  return submit(info, true, p2pTag(id_, tag), [=](Links& l, Work&) { l.send(peer, buf, nbytes); }, async);
}

WorkPtr Communicator::recv(void* buf, size_t nbytes, int peer, int64_t tag, bool async) {
  checkUsable();
  if (peer >= 0) checkRoot(peer, "peer");
  if (tag < 0 || tag > kMaxUserTag) throw Error("tag must be in [0, 2^31), got " + std::to_string(tag));
  CollectiveInfo info{"recv", CollKind::NONE, DataType::U8, nbytes, peer, "", ReduceOp::SUM, tag};
  if (async && !currentPlacement().onDevice()) {
    RequestPtr req;
    if (peer >= 0) req = routes_[peer].transport->irecv(routes_[peer].peer, p2pTag(id_, tag), buf, nbytes, nullptr);
    return postP2p(info, req, buf, nbytes, p2pTag(id_, tag));
  }
  return submit(info, true, p2pTag(id_, tag), [=](Links& l, Work& w) {
    if (peer >= 0) {
      l.recv(peer, buf, nbytes);
      w.source = peer;
      w.received = nbytes;
    } else {
      w.source = l.recvAny(buf, nbytes, 0, &w.received);
    }
  }, async);
}

}  // namespace hcomm
