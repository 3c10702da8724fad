// A TCP proxy on 127.0.0.1 for fault tests: forwards every connection to a target port and,
// when armed, cuts or holds the first connection that sends more than a number of bytes
// towards the target (a KV push, not the small control calls sharing the address).
#ifndef LSERVE_TESTS_TESTING_TCP_PROXY_H_
#define LSERVE_TESTS_TESTING_TCP_PROXY_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace lserve::testing {

class TcpProxy {
 public:
  // Listens on 127.0.0.1 at a free port; forwards once a target is set.
  static absl::StatusOr<std::unique_ptr<TcpProxy>> Start();
  ~TcpProxy();  // closes every connection and joins its threads

  int port() const { return port_; }
  void SetTarget(int port) { target_port_ = port; }

  // One-shot: the next connection to carry more than `bytes` towards the target (counted
  // from now) is closed on both sides.
  void CutAfter(int64_t bytes);
  // One-shot: the next such connection stops forwarding in both directions until Resume.
  void HoldAfter(int64_t bytes);
  void Resume();
  int cuts() const { return cuts_; }
  int64_t forwarded() const { return forwarded_; }  // bytes towards the target, in total
  bool holding() const { return holding_; }

 private:
  enum class Mode { kPass, kCut, kHold };
  TcpProxy() = default;
  void AcceptLoop();
  void Pump(int client, int server);
  // Counts `chunk` bytes towards the target on a connection; the armed rule that fires,
  // or kPass. Holds (until Resume) before returning kHold.
  Mode Count(int64_t chunk, uint64_t& epoch, int64_t& sent);

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<int> target_port_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable resumed_;
  Mode mode_ = Mode::kPass;
  int64_t threshold_ = 0;
  uint64_t arming_ = 0;  // bumps at each arming, so counts restart
  std::atomic<int> cuts_{0};
  std::atomic<int64_t> forwarded_{0};
  std::atomic<bool> holding_{false};
  std::thread acceptor_;
  std::vector<std::thread> pumps_;
};

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_TESTING_TCP_PROXY_H_
