// Starts lserve binaries as real processes on 127.0.0.1 for integration tests: waits for
// the port file they write once serving, and stops them (SIGTERM, then SIGKILL) within
// bounded time.
#ifndef LSERVE_TESTS_TESTING_PROCESS_UTIL_H_
#define LSERVE_TESTS_TESTING_PROCESS_UTIL_H_

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace lserve::testing {

inline std::string TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "lserve-test-XXXXXX").string();
  return mkdtemp(pattern.data()) == nullptr ? std::string() : pattern;
}

class ServerProcess {
 public:
  // Runs `binary` with `args` plus --port_file; stdout and stderr go to a log file.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& binary, std::vector<std::string> args,
      std::chrono::seconds timeout = std::chrono::seconds(60)) {
    std::unique_ptr<ServerProcess> p(new ServerProcess());
    p->dir_ = TempDir();
    const std::string port_file = p->dir_ + "/ports";
    p->log_ = p->dir_ + "/log";
    args.push_back("--port_file=" + port_file);
    p->pid_ = fork();
    if (p->pid_ < 0) return absl::InternalError("fork failed");
    if (p->pid_ == 0) {
      FILE* log = std::fopen(p->log_.c_str(), "w");
      if (log != nullptr) {
        dup2(fileno(log), 1);
        dup2(fileno(log), 2);
      }
      std::vector<char*> argv = {const_cast<char*>(binary.c_str())};
      for (std::string& arg : args) argv.push_back(arg.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    const auto give_up = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < give_up) {
      std::ifstream in(port_file);
      std::string line;
      while (std::getline(in, line)) {
        const size_t eq = line.find('=');
        if (eq != std::string::npos)
          p->ports_[line.substr(0, eq)] = std::atoi(line.c_str() + eq + 1);
      }
      if (!p->ports_.empty()) return p;
      int status = 0;
      if (waitpid(p->pid_, &status, WNOHANG) == p->pid_) {
        p->pid_ = -1;
        return absl::InternalError(absl::StrCat(binary, " exited early: ", p->Log()));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return absl::DeadlineExceededError(absl::StrCat(binary, " did not start: ", p->Log()));
  }

  ~ServerProcess() {
    if (pid_ > 0) Stop(SIGKILL, std::chrono::seconds(10));
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  int port(const std::string& name) const {
    auto it = ports_.find(name);
    return it == ports_.end() ? 0 : it->second;
  }
  std::string address(const std::string& name = "grpc_port") const {
    return absl::StrCat("127.0.0.1:", port(name));
  }
  pid_t pid() const { return pid_; }
  std::string Log() const {
    std::ifstream in(log_);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  // Sends `signal` and waits up to `timeout`; then SIGKILL. Returns the exit code (or
  // 128 + signal when killed).
  int Stop(int signal, std::chrono::seconds timeout) {
    if (pid_ <= 0) return -1;
    kill(pid_, signal);
    const auto give_up = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > give_up) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  std::string dir_;
  std::string log_;
  std::map<std::string, int> ports_;
};

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_TESTING_PROCESS_UTIL_H_
