#include "tests/testing/tcp_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

namespace lserve::testing {
namespace {

constexpr int kPollMs = 20;

int ConnectTo(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool WriteAll(int fd, const char* data, ssize_t size) {
  while (size > 0) {
    const ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n <= 0) return false;
    data += n;
    size -= n;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcpProxy>> TcpProxy::Start() {
  std::unique_ptr<TcpProxy> proxy(new TcpProxy());
  proxy->listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (bind(proxy->listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      listen(proxy->listen_fd_, 64) != 0 ||
      getsockname(proxy->listen_fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return absl::UnavailableError("the test proxy cannot listen on 127.0.0.1");
  }
  proxy->port_ = ntohs(address.sin_port);
  proxy->acceptor_ = std::thread([p = proxy.get()] { p->AcceptLoop(); });
  return proxy;
}

TcpProxy::~TcpProxy() {
  stop_ = true;
  resumed_.notify_all();
  if (acceptor_.joinable()) acceptor_.join();
  for (std::thread& pump : pumps_) pump.join();
  close(listen_fd_);
}

void TcpProxy::CutAfter(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  mode_ = Mode::kCut;
  threshold_ = bytes;
  ++arming_;
}

void TcpProxy::HoldAfter(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  mode_ = Mode::kHold;
  threshold_ = bytes;
  ++arming_;
}

void TcpProxy::Resume() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    holding_ = false;
  }
  resumed_.notify_all();
}

void TcpProxy::AcceptLoop() {
  while (!stop_) {
    pollfd listener{listen_fd_, POLLIN, 0};
    if (poll(&listener, 1, kPollMs) <= 0) continue;
    const int client = accept(listen_fd_, nullptr, nullptr);
    if (client < 0) continue;
    const int server = target_port_ > 0 ? ConnectTo(target_port_) : -1;
    if (server < 0) {
      close(client);
      continue;
    }
    // Only this thread touches pumps_ until the destructor joins it.
    pumps_.emplace_back([this, client, server] { Pump(client, server); });
  }
}

TcpProxy::Mode TcpProxy::Count(int64_t chunk, uint64_t& epoch, int64_t& sent) {
  std::unique_lock<std::mutex> lock(mu_);
  if (mode_ == Mode::kPass) return Mode::kPass;
  if (epoch != arming_) {
    epoch = arming_;
    sent = 0;
  }
  sent += chunk;
  if (sent <= threshold_) return Mode::kPass;
  const Mode fired = mode_;
  mode_ = Mode::kPass;
  if (fired == Mode::kCut) {
    ++cuts_;
    return fired;
  }
  holding_ = true;
  while (holding_ && !stop_) resumed_.wait_for(lock, std::chrono::milliseconds(kPollMs));
  return fired;
}

void TcpProxy::Pump(int client, int server) {
  char buffer[1 << 16];
  uint64_t epoch = 0;
  int64_t sent = 0;
  while (!stop_) {
    pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    if (poll(fds, 2, kPollMs) <= 0) continue;
    if (fds[0].revents != 0) {
      const ssize_t n = recv(client, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      if (Count(n, epoch, sent) == Mode::kCut) break;
      if (!WriteAll(server, buffer, n)) break;
      forwarded_ += n;
    }
    if (fds[1].revents != 0) {
      const ssize_t n = recv(server, buffer, sizeof(buffer), 0);
      if (n <= 0 || !WriteAll(client, buffer, n)) break;
    }
  }
  shutdown(client, SHUT_RDWR);
  shutdown(server, SHUT_RDWR);
  close(client);
  close(server);
}

}  // namespace lserve::testing
