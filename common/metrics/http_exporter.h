// Serves a Registry to Prometheus over HTTP (civetweb, the server prometheus-cpp embeds).
//
//   GET|HEAD /metrics  -> 200, text format 0.0.4
//   GET|HEAD <added>   -> whatever the AddHandler callback returns (e.g. /healthz)
//   any other path     -> 404; any other method on a known path -> 405
//
// Paths match exactly (a query string is ignored). Connections are not kept alive: a
// scrape every few seconds gains nothing from it, and it keeps shutdown prompt.
#ifndef LSERVE_COMMON_METRICS_HTTP_EXPORTER_H_
#define LSERVE_COMMON_METRICS_HTTP_EXPORTER_H_

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/metrics/registry.h"

struct mg_context;
struct mg_connection;

namespace lserve::metrics {

class HttpExporter {
 public:
  // Returns the HTTP status and a text/plain body.
  using Handler = std::function<std::pair<int, std::string>()>;

  // Listens on host:port only: an IPv4 address or a host name (IPv6 addresses, bracketed
  // or not, need a civetweb built with IPv6, which Debian 12's is not: Unimplemented).
  // Port 0 picks a free port, reported by port(). `registry` must outlive the exporter.
  // Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpExporter>> Start(const Registry* registry,
                                                             std::string host, int port);

  // Stops accepting, waits for requests in flight, and joins civetweb's threads.
  ~HttpExporter();
  HttpExporter(const HttpExporter&) = delete;
  HttpExporter& operator=(const HttpExporter&) = delete;

  int port() const { return port_; }

  // Serves `path` (starting with '/') from `handler`, called on a server thread per
  // request. AlreadyExists for /metrics or a path added before.
  absl::Status AddHandler(std::string path, Handler handler);

 private:
  explicit HttpExporter(const Registry* registry) : registry_(registry) {}
  static int HandleRequest(mg_connection* conn);
  int Serve(mg_connection* conn);

  const Registry* const registry_;
  std::string host_;  // as given, without IPv6 brackets
  mg_context* context_ = nullptr;
  int port_ = 0;
  std::mutex mu_;
  std::map<std::string, Handler, std::less<>> handlers_;
};

// For the servers' --metrics_listen: nullptr when `address` is empty; otherwise an
// exporter on host:port serving `healthz` at /healthz too.
absl::StatusOr<std::unique_ptr<HttpExporter>> StartExporterWithHealth(
    const Registry* registry, const std::string& address, HttpExporter::Handler healthz);

}  // namespace lserve::metrics

#endif  // LSERVE_COMMON_METRICS_HTTP_EXPORTER_H_
