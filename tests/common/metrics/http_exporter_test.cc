// The exporter over real sockets on 127.0.0.1: /metrics, extra handlers, 404 / 405, HEAD,
// start-up errors and shutdown, fetched with a minimal blocking HTTP/1.1 client.
#include "common/metrics/http_exporter.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace lserve::metrics {
namespace {

struct Reply {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;

  std::string Header(std::string_view name) const {
    for (const auto& [key, value] : headers) {
      if (key == name) return value;
    }
    return "";
  }
};

// Connects to 127.0.0.1:port, sends one request with Connection: close and reads until
// the server closes. Every socket call is bounded by a 5 s timeout.
absl::StatusOr<Reply> Fetch(int port, const std::string& method, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  timeval timeout = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect: ", std::strerror(err)));
  }
  const std::string request = absl::StrCat(method, " ", path,
                                           " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           "Content-Length: 0\r\nConnection: close\r\n\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("short send");
  }
  std::string raw;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      const int err = errno;
      close(fd);
      return absl::DeadlineExceededError(absl::StrCat("recv: ", std::strerror(err)));
    }
    raw.append(buf, n);
  }
  close(fd);

  const size_t split = raw.find("\r\n\r\n");
  if (split == std::string::npos) return absl::DataLossError("no end of headers: " + raw);
  Reply reply;
  reply.body = raw.substr(split + 4);
  std::vector<std::string> lines = absl::StrSplit(raw.substr(0, split), "\r\n");
  std::vector<std::string> status_line = absl::StrSplit(lines[0], ' ');
  if (status_line.size() < 2 || !absl::SimpleAtoi(status_line[1], &reply.status)) {
    return absl::DataLossError("bad status line: " + lines[0]);
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    reply.headers.emplace_back(absl::AsciiStrToLower(lines[i].substr(0, colon)),
                               std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1))));
  }
  return reply;
}

class HttpExporterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    requests_ = *registry_.AddCounter("lserve_requests_total", "Requests served.", {"outcome"});
    absl::StatusOr<std::unique_ptr<HttpExporter>> exporter =
        HttpExporter::Start(&registry_, "127.0.0.1", 0);
    ASSERT_TRUE(exporter.ok()) << exporter.status();
    exporter_ = *std::move(exporter);
    ASSERT_GT(exporter_->port(), 0);
  }

  Registry registry_;
  Family<Counter>* requests_ = nullptr;
  std::unique_ptr<HttpExporter> exporter_;
};

TEST_F(HttpExporterTest, MetricsServesTheExpositionAsTextFormat004) {
  requests_->LabelsOrDie({"ok"}).Increment(7);
  absl::StatusOr<Reply> reply = Fetch(exporter_->port(), "GET", "/metrics");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
  EXPECT_EQ(reply->Header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(reply->Header("content-length"), absl::StrCat(reply->body.size()));
  EXPECT_EQ(reply->body, registry_.Exposition());
  EXPECT_NE(reply->body.find("lserve_requests_total{outcome=\"ok\"} 7\n"), std::string::npos);

  requests_->LabelsOrDie({"ok"}).Increment();
  reply = Fetch(exporter_->port(), "GET", "/metrics?ignored=1");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
  EXPECT_NE(reply->body.find("lserve_requests_total{outcome=\"ok\"} 8\n"), std::string::npos);
}

TEST_F(HttpExporterTest, HeadSendsHeadersWithoutBody) {
  absl::StatusOr<Reply> reply = Fetch(exporter_->port(), "HEAD", "/metrics");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
  EXPECT_EQ(reply->Header("content-length"), absl::StrCat(registry_.Exposition().size()));
  EXPECT_EQ(reply->body, "");
}

TEST_F(HttpExporterTest, UnknownPathsAre404) {
  for (const char* path : {"/", "/metric", "/metricsx", "/metrics/sub", "/healthz"}) {
    absl::StatusOr<Reply> reply = Fetch(exporter_->port(), "GET", path);
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->status, 404) << path;
  }
}

TEST_F(HttpExporterTest, OtherMethodsAre405) {
  for (const char* method : {"POST", "PUT", "DELETE"}) {
    absl::StatusOr<Reply> reply = Fetch(exporter_->port(), method, "/metrics");
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->status, 405) << method;
    EXPECT_EQ(reply->Header("allow"), "GET, HEAD");
  }
}

TEST_F(HttpExporterTest, AddedHandlersServeTheirPath) {
  int status = 200;
  ASSERT_TRUE(exporter_
                  ->AddHandler("/healthz",
                               [&status] { return std::make_pair(status, std::string("ok\n")); })
                  .ok());
  absl::StatusOr<Reply> reply = Fetch(exporter_->port(), "GET", "/healthz");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
  EXPECT_EQ(reply->body, "ok\n");
  status = 503;
  EXPECT_EQ(Fetch(exporter_->port(), "GET", "/healthz")->status, 503);
  status = 42;  // not an HTTP status: the exporter answers 500 instead
  EXPECT_EQ(Fetch(exporter_->port(), "GET", "/healthz")->status, 500);
  EXPECT_EQ(Fetch(exporter_->port(), "POST", "/healthz")->status, 405);

  auto ok = [] { return std::make_pair(200, std::string()); };
  EXPECT_EQ(exporter_->AddHandler("/healthz", ok).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(exporter_->AddHandler("/metrics", ok).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(exporter_->AddHandler("nope", ok).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(exporter_->AddHandler("/empty", nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HttpExporterTest, ConcurrentScrapersAllSucceed) {
  std::vector<std::thread> scrapers;
  std::atomic<int> successes{0};
  for (int t = 0; t < 4; ++t) {
    scrapers.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        absl::StatusOr<Reply> reply = Fetch(exporter_->port(), "GET", "/metrics");
        if (reply.ok() && reply->status == 200) successes.fetch_add(1);
        requests_->LabelsOrDie({"ok"}).Increment();
      }
    });
  }
  for (std::thread& scraper : scrapers) scraper.join();
  EXPECT_EQ(successes.load(), 40);
}

TEST_F(HttpExporterTest, BusyPortIsUnavailableAndShutdownClosesThePort) {
  absl::StatusOr<std::unique_ptr<HttpExporter>> second =
      HttpExporter::Start(&registry_, "127.0.0.1", exporter_->port());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  const int port = exporter_->port();
  exporter_.reset();
  EXPECT_EQ(Fetch(port, "GET", "/metrics").status().code(), absl::StatusCode::kUnavailable);
}

TEST(HttpExporterStartTest, RejectsBadArguments) {
  Registry registry;
  EXPECT_EQ(HttpExporter::Start(nullptr, "127.0.0.1", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (int port : {-1, 65536}) {
    EXPECT_EQ(HttpExporter::Start(&registry, "127.0.0.1", port).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  for (const char* host : {"", "127.0.0.1:1,0.0.0.0", "127.0.0.1 x"}) {
    EXPECT_EQ(HttpExporter::Start(&registry, host, 0).status().code(),
              absl::StatusCode::kInvalidArgument)
        << host;
  }
}

}  // namespace
}  // namespace lserve::metrics
