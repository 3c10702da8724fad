#include "common/command_line.h"

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>

namespace lserve {
namespace {

std::set<std::string>& GivenFlags() {
  static std::set<std::string> given;
  return given;
}

sigset_t StopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  return signals;
}

}  // namespace

void RecordGivenFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") break;
    if (arg.rfind("--", 0) != 0) continue;
    const size_t equals = arg.find('=');
    arg = arg.substr(2, equals == std::string::npos ? std::string::npos : equals - 2);
    GivenFlags().insert(arg);
    if (arg.rfind("no", 0) == 0) GivenFlags().insert(arg.substr(2));
  }
}

bool FlagGiven(const std::string& name) { return GivenFlags().count(name) > 0; }

std::pair<std::string, int> SplitHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return {address, -1};
  const std::string port = address.substr(colon + 1);
  char* end = nullptr;
  const long value = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || value < 0 || value > 65535) {
    return {address.substr(0, colon), -1};
  }
  return {address.substr(0, colon), static_cast<int>(value)};
}

void WritePortFile(const std::string& path, int grpc_port, int metrics_port) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << "grpc_port=" << grpc_port << "\nmetrics_port=" << metrics_port << "\n";
  std::rename(tmp.c_str(), path.c_str());
}

void BlockStopSignals() {
  const sigset_t signals = StopSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
}

int WaitForStopSignal() {
  const sigset_t signals = StopSignals();
  int signal = 0;
  sigwait(&signals, &signal);
  return signal;
}

}  // namespace lserve
