// The worker's service overhead on the CPU backend with the built-in tiny model: the
// same closed-loop workload (c clients, each sending 4 requests of a 32-token prompt and
// 32 generated tokens back to back) through gRPC to an lserve-worker process and
// in-process through the same WorkerHandler, at concurrency 1-64.
//
// Usage: service_bench --worker=PATH [--concurrency=1,4,16,64] [--threads=2] [--json=PATH]
#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "client/client.h"
#include "tests/testing/process_util.h"
#include "worker/model/synthetic_model.h"
#include "worker/service/worker_handler.h"

namespace lserve {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kRequestsPerClient = 4;
constexpr int kPrompt = 32;
constexpr int kGenerated = 32;

v1::GenerateRequest Request(int client, int round) {
  v1::GenerateRequest request;
  for (int i = 0; i < kPrompt; ++i)
    request.add_prompt_token_ids((i * 31 + client * 7 + round) % 500 + 3);
  request.mutable_sampling()->set_max_tokens(kGenerated);
  return request;
}

struct Result {
  double wall_s = 0.0;
  int64_t requests = 0;
  int64_t tokens = 0;
  int64_t failed = 0;
};

// c client threads, each running its requests one after another through `run`.
Result ClosedLoop(int concurrency, const std::function<int64_t(const v1::GenerateRequest&)>& run) {
  std::atomic<int64_t> tokens{0}, failed{0};
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c) {
    clients.emplace_back([&, c] {
      for (int round = 0; round < kRequestsPerClient; ++round) {
        const int64_t n = run(Request(c, round));
        if (n < 0) {
          ++failed;
        } else {
          tokens += n;
        }
      }
    });
  }
  for (auto& client : clients) client.join();
  Result result;
  result.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  result.requests = int64_t{concurrency} * kRequestsPerClient;
  result.tokens = tokens.load();
  result.failed = failed.load();
  return result;
}

int Main(int argc, char** argv) {
  const std::string worker_binary = bench::FlagValue(argc, argv, "worker");
  const int threads = std::stoi(bench::FlagValue(argc, argv, "threads", "2"));
  std::vector<int> levels;
  for (absl::string_view part :
       absl::StrSplit(bench::FlagValue(argc, argv, "concurrency", "1,4,16,64"), ',')) {
    int value;
    if (!absl::SimpleAtoi(part, &value) || value <= 0) return 2;
    levels.push_back(value);
  }
  if (worker_binary.empty()) {
    std::fprintf(stderr, "--worker=PATH to lserve-worker is required\n");
    return 2;
  }
  auto worker = testing::ServerProcess::Start(
      worker_binary,
      {"--listen=127.0.0.1:0", "--threads=" + std::to_string(threads), "--max_running=64"});
  if (!worker.ok()) {
    std::fprintf(stderr, "%s\n", worker.status().ToString().c_str());
    return 1;
  }
  ClientOptions client_options;
  client_options.target = (*worker)->address();
  auto client = *Client::Connect(client_options);

  // The in-process twin: the same engine, scheduler and handler, no network.
  EngineOptions engine_options;
  engine_options.num_threads = threads;
  engine_options.max_sequences = 64;
  auto engine = *Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), engine_options);
  SchedulerOptions scheduling;
  scheduling.max_running = 64;
  auto scheduler = *Scheduler::Create(engine.get(), scheduling);
  EngineLoop loop(engine.get(), scheduler.get());
  WorkerIdentity identity;
  identity.model_name = "builtin-tiny";
  identity.max_context = engine->config().max_position_embeddings;
  WorkerHandler handler(&loop, identity, nullptr, nullptr);

  auto grpc_run = [&](const v1::GenerateRequest& request) -> int64_t {
    auto result = client->Generate(request);
    return result.ok() ? static_cast<int64_t>(result->tokens.size()) : -1;
  };
  auto local_run = [&](const v1::GenerateRequest& request) -> int64_t {
    std::promise<int64_t> done;
    auto count = std::make_shared<int64_t>(0);
    auto id = handler.StartGenerate(
        request, std::nullopt,
        [&done, count](const v1::GenerateResponse& r, bool final, const absl::Status& s) {
          *count += r.tokens_size();
          if (final) done.set_value(s.ok() ? *count : -1);
        });
    if (!id.ok()) return -1;
    return done.get_future().get();
  };
  grpc_run(Request(0, 0));  // warm up both paths
  local_run(Request(0, 0));

  nlohmann::json report = {{"provenance", bench::Provenance(argc, argv)},
                           {"model", "built-in tiny synthetic model (4 layers, hidden 128)"},
                           {"workload",
                            "closed loop: each client sends 4 requests of a "
                            "32-token prompt and 32 generated tokens"},
                           {"threads", threads}};
  std::printf("%11s %10s %10s %12s %10s %12s %9s\n", "concurrency", "path", "wall s", "requests/s",
              "tokens/s", "ms/request", "overhead");
  for (int concurrency : levels) {
    const Result local = ClosedLoop(concurrency, local_run);
    const Result remote = ClosedLoop(concurrency, grpc_run);
    for (const auto& [path, r] : {std::pair{"in-process", local}, std::pair{"grpc", remote}}) {
      const double rps = r.requests / r.wall_s;
      const double overhead = r.wall_s / local.wall_s - 1.0;
      std::printf("%11d %10s %10.3f %12.1f %10.1f %12.2f %8.1f%%\n", concurrency, path, r.wall_s,
                  rps, r.tokens / r.wall_s, 1e3 * r.wall_s * concurrency / r.requests,
                  100.0 * overhead);
      report["runs"].push_back({{"concurrency", concurrency},
                                {"path", path},
                                {"wall_s", r.wall_s},
                                {"requests", r.requests},
                                {"failed", r.failed},
                                {"requests_per_s", rps},
                                {"tokens_per_s", r.tokens / r.wall_s},
                                {"wall_over_in_process", overhead}});
    }
  }
  loop.Stop();
  (*worker)->Stop(SIGTERM, std::chrono::seconds(30));
  return bench::WriteReport(report, bench::FlagValue(argc, argv, "json")) ? 0 : 1;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) { return lserve::Main(argc, argv); }
