// Helpers the lserve binaries share for their command lines and lifetimes: which flags
// were given explicitly (they override a config file; the rest keep its values), host:port
// splitting, the port file, and waiting for SIGTERM/SIGINT.
#ifndef LSERVE_COMMON_COMMAND_LINE_H_
#define LSERVE_COMMON_COMMAND_LINE_H_

#include <string>
#include <utility>

namespace lserve {

// Records the --name and --name=value (and --noname) flags of argv.
void RecordGivenFlags(int argc, char** argv);
bool FlagGiven(const std::string& name);

// "host:port" -> {host, port}; port -1 when missing or not a number.
std::pair<std::string, int> SplitHostPort(const std::string& address);

// Writes "grpc_port=N" and "metrics_port=M" lines atomically (a temporary file renamed
// into place), for whoever started the server on port 0. Nothing when path is empty.
void WritePortFile(const std::string& path, int grpc_port, int metrics_port);

// Blocks SIGTERM and SIGINT in this thread and every thread it starts later; call first
// thing in main.
void BlockStopSignals();
// Waits for one of them; returns its number.
int WaitForStopSignal();

}  // namespace lserve

#endif  // LSERVE_COMMON_COMMAND_LINE_H_
