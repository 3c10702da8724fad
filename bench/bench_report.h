// Shared by the bench programs: command-line --json=PATH, and the provenance every recorded
// result carries (date, machine, commit, command line) so anyone can rerun it.
#ifndef LSERVE_BENCH_BENCH_REPORT_H_
#define LSERVE_BENCH_BENCH_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace lserve::bench {

// Value of --name=VALUE among the arguments, or `fallback`.
std::string FlagValue(int argc, char** argv, const std::string& name,
                      const std::string& fallback = "");
// A comma-separated list of positive integers ("8192,32768"); a bad entry ends the program
// with a message naming `program`.
std::vector<int64_t> IntList(const std::string& text, const char* program);

// {"date", "cpu", "threads", "commit", "working_tree", "command"}.
nlohmann::json Provenance(int argc, char** argv);

// Writes `report` to `path` (pretty-printed) when path is not empty; false on failure.
bool WriteReport(const nlohmann::json& report, const std::string& path);

}  // namespace lserve::bench

#endif  // LSERVE_BENCH_BENCH_REPORT_H_
