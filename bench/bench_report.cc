#include "bench/bench_report.h"

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace lserve::bench {
namespace {

std::string FirstLine(const char* command) {
  std::string line;
  if (FILE* pipe = popen(command, "r")) {
    char buffer[256];
    if (fgets(buffer, sizeof(buffer), pipe)) line = buffer;
    pclose(pipe);
  }
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  return line;
}

}  // namespace

std::string FlagValue(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(prefix, 0) == 0) return arg.substr(prefix.size());
  }
  return fallback;
}

std::vector<int64_t> IntList(const std::string& text, const char* program) {
  std::vector<int64_t> values;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(part, &value) || value <= 0) {
      std::fprintf(stderr, "%s: bad number '%s'\n", program, std::string(part).c_str());
      std::exit(2);
    }
    values.push_back(value);
  }
  return values;
}

nlohmann::json Provenance(int argc, char** argv) {
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  std::string command;
  for (int i = 0; i < argc; ++i) {
    if (i > 0) command += ' ';
    command += argv[i];
  }
  return {
      {"date", date},
      {"cpu", FirstLine("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")},
      {"hardware_threads", std::thread::hardware_concurrency()},
      // A machine without the repository's history (a GPU machine given a copy of the
      // tree) names the commit in LSERVE_COMMIT.
      {"commit", std::getenv("LSERVE_COMMIT") != nullptr
                     ? std::string(std::getenv("LSERVE_COMMIT"))
                     : FirstLine("git rev-parse --short HEAD 2>/dev/null")},
      // Uncommitted changes mean the numbers come from the commit that records them.
      {"working_tree",
       FirstLine("git status --porcelain 2>/dev/null | head -1").empty() ? "clean" : "modified"},
      {"command", command}};
}

bool WriteReport(const nlohmann::json& report, const std::string& path) {
  if (path.empty()) return true;
  std::ofstream out(path);
  out << report.dump(2) << "\n";
  return static_cast<bool>(out);
}

}  // namespace lserve::bench
