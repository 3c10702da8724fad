#include "common/metrics/http_exporter.h"

#include <civetweb.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <string_view>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/metrics/text_format.h"

namespace lserve::metrics {
namespace {

constexpr std::string_view kMetricsPath = "/metrics";

// civetweb wants its global state set up once before the first server starts.
void InitCivetwebOnce() {
  static std::once_flag once;
  std::call_once(once, [] { mg_init_library(0); });
}

// RFC 9110 IMF-fixdate, built by hand: strftime's names follow the process locale.
std::string HttpDate() {
  static constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const std::time_t now = std::time(nullptr);
  std::tm utc = {};
  gmtime_r(&now, &utc);
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT", kDays[utc.tm_wday],
                utc.tm_mday, kMonths[utc.tm_mon], utc.tm_year + 1900, utc.tm_hour, utc.tm_min,
                utc.tm_sec);
  return buf;
}

// The response is written whole rather than through civetweb's header helpers: those
// stamp the Date with gmtime(), whose shared buffer races between worker threads.
int SendResponse(mg_connection* conn, int status, std::string_view content_type,
                 const std::string& body, bool head_only, bool allow_header) {
  const std::string head = absl::StrCat(
      "HTTP/1.1 ", status, " ", mg_get_response_code_text(conn, status),
      "\r\nContent-Type: ", absl::string_view(content_type.data(), content_type.size()),
      "\r\nContent-Length: ", body.size(), allow_header ? "\r\nAllow: GET, HEAD" : "",
      "\r\nDate: ", HttpDate(), "\r\nConnection: close\r\n\r\n");
  mg_write(conn, head.data(), head.size());
  if (!head_only && !body.empty()) mg_write(conn, body.data(), body.size());
  return status;
}

// Opens and closes one TCP connection to host:port, ignoring failures.
void PokeListener(const std::string& host, int port) {
  addrinfo hints = {};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &addresses) != 0) return;
  for (addrinfo* a = addresses; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const bool connected = connect(fd, a->ai_addr, a->ai_addrlen) == 0;
    close(fd);
    if (connected) break;
  }
  freeaddrinfo(addresses);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpExporter>> HttpExporter::Start(const Registry* registry,
                                                                  std::string host, int port) {
  if (registry == nullptr) return absl::InvalidArgumentError("metrics exporter needs a registry");
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics port ", port, " is out of range"));
  }
  // An empty host would make civetweb listen on every interface; a comma or space would
  // smuggle in a second listening address.
  if (host.empty() || host.find_first_of(", \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("metrics host \"", host, "\" is not valid"));
  }
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const bool ipv6 = host.find(':') != std::string::npos;
  if (ipv6 && mg_check_feature(MG_FEATURES_IPV6) == 0) {
    return absl::UnimplementedError(
        absl::StrCat("metrics host ", host, ": this civetweb build has no IPv6 support"));
  }
  const std::string bracketed = ipv6 ? "[" + host + "]" : host;
  const std::string listening = absl::StrCat(bracketed, ":", port);

  InitCivetwebOnce();
  std::unique_ptr<HttpExporter> exporter(new HttpExporter(registry));
  exporter->host_ = host;
  const char* options[] = {"listening_ports", listening.c_str(),
                           // A scrape is one short request; a few threads serve many
                           // scrapers without holding fifty idle stacks.
                           "num_threads", "4",
                           // A client that stalls mid-request must not pin a thread.
                           "request_timeout_ms", "10000", "enable_keep_alive", "no", nullptr};
  mg_callbacks callbacks = {};
  callbacks.begin_request = &HttpExporter::HandleRequest;
  mg_init_data init = {};
  init.callbacks = &callbacks;
  init.user_data = exporter.get();
  init.configuration_options = options;
  unsigned error_code = 0;
  char error_text[256] = {};
  mg_error_data error = {};
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  exporter->context_ = mg_start2(&init, &error);
  if (exporter->context_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", listening, ": ",
                     error_text[0] != '\0' ? error_text : "civetweb failed to start"));
  }
  mg_server_port bound = {};
  if (mg_get_server_ports(exporter->context_, 1, &bound) != 1 || bound.port <= 0) {
    return absl::InternalError(absl::StrCat("metrics server on ", listening, " reports no port"));
  }
  exporter->port_ = bound.port;
  return exporter;
}

HttpExporter::~HttpExporter() {
  if (context_ == nullptr) return;
  // civetweb's accept loop only sees the stop flag between 2 s polls; a connection to our
  // own port ends the current poll at once, so shutdown takes milliseconds instead.
  std::atomic<bool> stopped{false};
  std::thread waker([this, &stopped] {
    while (!stopped.load()) {
      PokeListener(host_, port_);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  mg_stop(context_);
  stopped.store(true);
  waker.join();
}

absl::Status HttpExporter::AddHandler(std::string path, Handler handler) {
  if (path.empty() || path.front() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("handler path \"", path, "\" must start with /"));
  }
  if (!handler) return absl::InvalidArgumentError(absl::StrCat("handler for ", path, " is empty"));
  std::lock_guard<std::mutex> lock(mu_);
  if (path == kMetricsPath || handlers_.contains(path)) {
    return absl::AlreadyExistsError(absl::StrCat("a handler for ", path, " exists"));
  }
  handlers_.emplace(std::move(path), std::move(handler));
  return absl::OkStatus();
}

int HttpExporter::HandleRequest(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  return static_cast<HttpExporter*>(info->user_data)->Serve(conn);
}

int HttpExporter::Serve(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  // local_uri is decoded and has the query string split off.
  const std::string_view path = info->local_uri != nullptr ? info->local_uri : "";
  const std::string_view method = info->request_method != nullptr ? info->request_method : "";
  const bool head = method == "HEAD";
  const bool get_or_head = head || method == "GET";
  constexpr std::string_view kPlain = "text/plain; charset=utf-8";

  if (path == kMetricsPath) {
    if (!get_or_head) return SendResponse(conn, 405, kPlain, "method not allowed\n", false, true);
    return SendResponse(conn, 200, kTextContentType, registry_->Exposition(), head, false);
  }
  // Copied out so the handler runs without the lock: a slow one must not block AddHandler.
  Handler handler;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = handlers_.find(path); it != handlers_.end()) handler = it->second;
  }
  if (!handler) return SendResponse(conn, 404, kPlain, "not found\n", head, false);
  if (!get_or_head) return SendResponse(conn, 405, kPlain, "method not allowed\n", false, true);
  auto [status, body] = handler();
  if (status < 100 || status > 599) {
    body = absl::StrCat("handler for ", std::string(path), " returned HTTP status ", status, "\n");
    status = 500;
  }
  return SendResponse(conn, status, kPlain, body, head, false);
}

absl::StatusOr<std::unique_ptr<HttpExporter>> StartExporterWithHealth(
    const Registry* registry, const std::string& address, HttpExporter::Handler healthz) {
  if (address.empty()) return nullptr;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' is not host:port"));
  }
  const std::string port = address.substr(colon + 1);
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos ||
      port.size() > 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' has no valid port"));
  }
  auto exporter = HttpExporter::Start(registry, address.substr(0, colon), std::stoi(port));
  if (!exporter.ok()) return exporter.status();
  if (absl::Status status = (*exporter)->AddHandler("/healthz", std::move(healthz)); !status.ok()) {
    return status;
  }
  return exporter;
}

}  // namespace lserve::metrics
