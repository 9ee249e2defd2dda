// TCP transport for ranks on different hosts.
//
// One connection per peer pair: the higher rank connects to the lower rank's listener
// and presents the job token and its rank. The listener serves every connection at
// once (poll), each with its own deadline for its hello, so a stranger that connects
// and stalls costs the job nothing; without the token, or with a rank that is not an
// expected peer, a connection is closed unanswered. Once every peer is in, the
// listener is closed. Messages are a 32-byte header (magic, tag, length, fingerprint)
// and the payload, written with non-blocking sockets by progress(); a receive that
// reduces stages the payload through a small buffer and combines it as it lands.
// Closing (the destructor) delivers what was sent: see closeGracefully().
#pragma once
#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "transport/matcher.h"
#include "transport/socket.h"
#include "transport/transport.h"

namespace hcomm {

class TcpTransport : public Transport {
 public:
  TcpTransport(int rank, const std::string& bindIp, const std::string& token, double timeoutSec);
  ~TcpTransport() override;

  std::string address() const;  // "ip:port" of this rank's listener
  // Connects to every rank in `peers`; addrs[r] is rank r's address().
  void connect(const std::vector<int>& peers, const std::vector<std::string>& addrs);

  const char* name() const override { return "tcp"; }
  // Host memory, to the ranks connect() was given.
  bool canConnect(int peer, MemKind mem) const override {
    return mem == MemKind::HOST && std::find(reach_.begin(), reach_.end(), peer) != reach_.end();
  }
  RequestPtr isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) override;
  RequestPtr irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                   uint64_t fingerprint) override;
  bool progress() override;
  void sleepFor(int us) override;
  bool probe(int peer, uint64_t tag, size_t* nbytes) override;
  bool stale(int peer, uint64_t lo, uint64_t hi, uint64_t* tag, uint64_t* fingerprint) override;
  void abort(const std::string& why) override;
  std::string peerFailure(int peer) override;
  std::string waitState(int peer, uint64_t tagBase) override;

  // Progress queries, for the report after a timeout: query() tells every connected peer
  // how far this rank got on communicator `comm` (from `source`) and asks the same back;
  // a peer inside hcomm (progressing this transport) answers at once; answer() says what
  // `rank` last told about itself, in a query or an answer.
  using ProgressSource = std::function<bool(uint32_t comm, CallProgress* out)>;
  void setProgressSource(ProgressSource source);
  void query(uint32_t comm);
  bool answer(int rank, uint32_t comm, CallProgress* out);

 private:
  struct Header {
    uint64_t magic;
    uint64_t tag;
    uint64_t nbytes;
    uint64_t fingerprint;
  };
  struct OutMsg {
    RequestPtr req;
    Header hdr;
    const char* buf;
    size_t sent = 0;  // header and payload bytes written
  };
  struct Peer {
    int rank = -1;
    int fd = -1;
    std::deque<OutMsg> sending;
    PeerMatch match;
    // receive state: header, then payload into a posted receive or an unexpected buffer
    Header hdr;
    size_t hdrGot = 0;
    size_t got = 0;
    bool inPayload = false;
    bool toPosted = false;
    PostedRecv current;
    UnexpectedPtr streaming;
    std::vector<char> stage;  // reducing receives: payload staged here, then combined
    size_t staged = 0;
    std::string broken;
  };

  Peer& peerOf(int rank);
  void closeGracefully();  // every byte sent reaches its peer's kernel before the close
  bool flush(Peer& p);
  bool drain(Peer& p);
  void startPayload(Peer& p);
  void finishPayload(Peer& p);
  void fail(Peer& p, const std::string& why);
  void failWaiting(Peer& p, const std::string& why);  // every request on p fails
  void tellAbort(Peer& p, const std::string& why, bool midMessage);
  void finishHalfSent(Peer& p);  // before an abort notice: complete a frame cut off midway
  bool writeFront(Peer& p, bool* moved);  // one write of the first queued frame; true when it is all out
  void sendControl(Peer& p, uint64_t magic, uint64_t tag, uint64_t fingerprint);  // a header-only frame
  void sendProgress(Peer& p, uint64_t magic, uint32_t comm);  // a query or an answer with our progress
  void handleControl(Peer& p);  // a query or an answer whose header just arrived
  // Accepts until every rank in `from` has presented itself; throws naming the rest.
  void acceptPeers(const std::vector<int>& from, Clock::time_point deadline);

  int rank_;
  std::string ip_;
  int port_ = 0;
  int listenFd_ = -1;
  std::string token_;
  double timeoutSec_;
  std::map<int, Peer> peers_;
  std::vector<int> reach_;  // the peers of connect(), fixed from then on (canConnect reads it unlocked)
  std::recursive_mutex mu_;
  std::string aborted_;
  ProgressSource progressSource_;
  std::map<std::pair<int, uint32_t>, CallProgress> answers_;  // (rank, communicator)
};

}  // namespace hcomm
