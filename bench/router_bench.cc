// The router's cost, on the CPU backend with the built-in tiny model, processes on
// 127.0.0.1:
//  1. Overhead: the latency a request gains by going through lserve-router rather than
//     straight to the unified worker behind it (TTFT and end to end, p50 and p99), at
//     concurrency 1 and 8. Direct and routed requests alternate, so drift hits both.
//  2. Hand-off: a prefill worker's KV pushed into a decode worker's reservation over
//     loopback gRPC (TransferKv), by prompt length, in ms per MB and MB/s.
//
// Usage: router_bench --worker=PATH --router=PATH [--requests=200] [--json=PATH]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "bench/bench_report.h"
#include "client/client.h"
#include "lserve/v1/worker.grpc.pb.h"
#include "tests/testing/process_util.h"

namespace lserve {
namespace {

using Clock = std::chrono::steady_clock;
using testing::ServerProcess;

v1::GenerateRequest Request(int prompt, int salt, int max_tokens) {
  v1::GenerateRequest request;
  for (int i = 0; i < prompt; ++i) request.add_prompt_token_ids((i * 37 + salt * 11) % 500 + 3);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  return request;
}

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(q * values.size()))];
}

struct Latencies {
  std::vector<double> ttft_ms, total_ms;
  int failed = 0;
};

// `concurrency` threads each alternate a direct and a routed request, `requests` in all.
std::pair<Latencies, Latencies> Alternate(Client& direct, Client& routed, int concurrency,
                                          int requests) {
  std::mutex mu;
  std::pair<Latencies, Latencies> out;
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&] {
      for (int i; (i = next++) < requests;) {
        for (int path = 0; path < 2; ++path) {
          Client& client = path == 0 ? direct : routed;
          const Clock::time_point start = Clock::now();
          Clock::time_point first;
          auto result = client.Generate(Request(16, i, 8), [&](const v1::GenerateResponse& r) {
            if (first == Clock::time_point() && r.tokens_size() > 0) first = Clock::now();
          });
          const Clock::time_point end = Clock::now();
          std::lock_guard<std::mutex> lock(mu);
          Latencies& l = path == 0 ? out.first : out.second;
          if (!result.ok()) {
            ++l.failed;
            continue;
          }
          l.ttft_ms.push_back(std::chrono::duration<double, std::milli>(first - start).count());
          l.total_ms.push_back(std::chrono::duration<double, std::milli>(end - start).count());
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  return out;
}

std::unique_ptr<ServerProcess> Start(const std::string& binary, std::vector<std::string> args) {
  auto process = ServerProcess::Start(binary, args);
  if (!process.ok()) {
    std::fprintf(stderr, "%s\n", process.status().ToString().c_str());
    return nullptr;
  }
  return *std::move(process);
}

void Overhead(const std::string& worker_binary, const std::string& router_binary, int requests,
              nlohmann::json& report) {
  auto worker = Start(worker_binary, {"--listen=127.0.0.1:0", "--threads=1"});
  if (worker == nullptr) return;
  auto router = Start(router_binary, {"--listen=127.0.0.1:0", "--health_interval_s=0.2",
                                      "--workers=unified=" + worker->address()});
  if (router == nullptr) return;
  ClientOptions options;
  options.target = worker->address();
  auto direct = *Client::Connect(options);
  options.target = router->address();
  auto routed = *Client::Connect(options);
  for (int i = 0; i < 200 && !routed->Generate(Request(16, 0, 2)).ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // until a health round ran
  }
  Alternate(*direct, *routed, 1, 20);  // warm-up
  std::printf("router overhead (16-token prompt, 8 tokens)\n%11s %8s %9s %9s %9s %9s %7s\n",
              "concurrency", "path", "ttft p50", "ttft p99", "e2e p50", "e2e p99", "failed");
  for (int concurrency : {1, 8}) {
    auto [d, r] = Alternate(*direct, *routed, concurrency, requests);
    nlohmann::json run = {{"concurrency", concurrency}, {"requests_per_path", requests}};
    for (const auto& [path, l] : {std::pair{"direct", &d}, std::pair{"router", &r}}) {
      std::printf("%11d %8s %9.3f %9.3f %9.3f %9.3f %7d\n", concurrency, path,
                  Percentile(l->ttft_ms, 0.5), Percentile(l->ttft_ms, 0.99),
                  Percentile(l->total_ms, 0.5), Percentile(l->total_ms, 0.99), l->failed);
      run[path] = {{"ttft_ms_p50", Percentile(l->ttft_ms, 0.5)},
                   {"ttft_ms_p99", Percentile(l->ttft_ms, 0.99)},
                   {"e2e_ms_p50", Percentile(l->total_ms, 0.5)},
                   {"e2e_ms_p99", Percentile(l->total_ms, 0.99)},
                   {"failed", l->failed}};
    }
    run["added_ms"] = {{"ttft_p50", Percentile(r.ttft_ms, 0.5) - Percentile(d.ttft_ms, 0.5)},
                       {"ttft_p99", Percentile(r.ttft_ms, 0.99) - Percentile(d.ttft_ms, 0.99)},
                       {"e2e_p50", Percentile(r.total_ms, 0.5) - Percentile(d.total_ms, 0.5)},
                       {"e2e_p99", Percentile(r.total_ms, 0.99) - Percentile(d.total_ms, 0.99)}};
    std::printf("%11d %8s %9.3f %9.3f %9.3f %9.3f\n", concurrency, "added",
                run["added_ms"]["ttft_p50"].get<double>(),
                run["added_ms"]["ttft_p99"].get<double>(), run["added_ms"]["e2e_p50"].get<double>(),
                run["added_ms"]["e2e_p99"].get<double>());
    report["overhead"].push_back(run);
  }
}

void Handoff(const std::string& worker_binary, nlohmann::json& report) {
  const std::vector<std::string> common = {"--listen=127.0.0.1:0", "--threads=1", "--dense",
                                           "--max_batch_tokens=4096"};
  std::vector<std::string> prefill_args = common, decode_args = common;
  prefill_args.push_back("--role=prefill");
  decode_args.push_back("--role=decode");
  auto prefill = Start(worker_binary, prefill_args);
  auto decode = Start(worker_binary, decode_args);
  if (prefill == nullptr || decode == nullptr) return;
  auto p = v1::Worker::NewStub(
      grpc::CreateChannel(prefill->address(), grpc::InsecureChannelCredentials()));
  auto d = v1::Worker::NewStub(
      grpc::CreateChannel(decode->address(), grpc::InsecureChannelCredentials()));
  std::printf("\nKV hand-off over loopback gRPC (dense KV, float32)\n%8s %10s %10s %10s %10s\n",
              "tokens", "MB", "ms p50", "ms/MB", "MB/s");
  for (int tokens : {256, 1024, 2048, 4000}) {
    std::vector<double> ms;
    double mb = 0;
    for (int repeat = 0; repeat < 6; ++repeat) {
      grpc::ClientContext reserve_context, prefill_context, transfer_context, release_context,
          drop_context;
      v1::ReserveKvRequest reserve;
      reserve.set_prompt_tokens(tokens);
      reserve.set_max_tokens(8);
      v1::ReserveKvResponse reserved;
      v1::PrefillRequest prefill_request;
      *prefill_request.mutable_request() = Request(tokens, repeat, 8);
      v1::PrefillResponse prefilled;
      if (!d->ReserveKv(&reserve_context, reserve, &reserved).ok() ||
          !p->Prefill(&prefill_context, prefill_request, &prefilled).ok()) {
        std::fprintf(stderr, "reserve or prefill failed at %d tokens\n", tokens);
        return;
      }
      v1::TransferKvRequest transfer;
      transfer.set_kv_handle(prefilled.kv_handle());
      transfer.set_target(decode->address());
      transfer.set_reservation_id(reserved.reservation_id());
      v1::TransferKvResponse moved;
      const Clock::time_point start = Clock::now();
      const grpc::Status status = p->TransferKv(&transfer_context, transfer, &moved);
      const double elapsed =
          std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      v1::ReleaseKvRequest release;
      v1::ReleaseKvResponse released;
      release.set_kv_handle(prefilled.kv_handle());
      (void)p->ReleaseKv(&release_context, release, &released);
      v1::ReleaseKvRequest drop;
      drop.set_reservation_id(reserved.reservation_id());
      (void)d->ReleaseKv(&drop_context, drop, &released);
      if (!status.ok()) {
        std::fprintf(stderr, "transfer failed: %s\n", status.error_message().c_str());
        return;
      }
      if (repeat == 0) continue;  // warm-up
      ms.push_back(elapsed);
      mb = moved.bytes() / 1e6;
    }
    const double p50 = Percentile(ms, 0.5);
    std::printf("%8d %10.2f %10.2f %10.2f %10.1f\n", tokens, mb, p50, p50 / mb, mb / (p50 / 1e3));
    report["handoff"].push_back({{"prompt_tokens", tokens},
                                 {"megabytes", mb},
                                 {"ms_p50", p50},
                                 {"ms_per_mb", p50 / mb},
                                 {"mb_per_s", mb / (p50 / 1e3)},
                                 {"samples_ms", ms}});
  }
}

int Main(int argc, char** argv) {
  const std::string worker = bench::FlagValue(argc, argv, "worker");
  const std::string router = bench::FlagValue(argc, argv, "router");
  const int requests = std::stoi(bench::FlagValue(argc, argv, "requests", "200"));
  if (worker.empty() || router.empty()) {
    std::fprintf(stderr, "--worker=PATH and --router=PATH are required\n");
    return 2;
  }
  nlohmann::json report = {{"provenance", bench::Provenance(argc, argv)},
                           {"model", "built-in tiny synthetic model (4 layers, hidden 128)"},
                           {"processes", "router and workers on 127.0.0.1, 1 engine thread each"}};
  Overhead(worker, router, requests, report);
  Handoff(worker, report);
  return bench::WriteReport(report, bench::FlagValue(argc, argv, "json")) ? 0 : 1;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) { return lserve::Main(argc, argv); }
