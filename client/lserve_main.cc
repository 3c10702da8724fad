// lserve: the command-line client of lserve.v1 (a router or a worker).
//   lserve generate --prompt_ids=1,2,3 [--max_tokens=N ...]   streams ids, or --json
//   lserve info | load                                          prints the message as JSON
//   lserve abort --request_id=ID
//   lserve health [--wait_s=N]                                  exit 0 once SERVING
#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "common/token_ids.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Router or worker address");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA verifying the server (enables TLS)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mTLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM client key (mTLS)");
ABSL_FLAG(std::string, api_key, "", "API key; default: $LSERVE_API_KEY");
ABSL_FLAG(std::string, prompt_ids, "", "Prompt token ids, comma-separated");
ABSL_FLAG(std::string, prompt_ids_file, "",
          "A file of prompt token ids, separated by commas or white space (long prompts)");
ABSL_FLAG(int, max_tokens, 16, "Tokens to generate");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature; 0 is greedy");
ABSL_FLAG(int, top_k, 0, "Keep the k most likely tokens; 0 keeps all");
ABSL_FLAG(float, top_p, 1.0f, "Nucleus mass in (0, 1]");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(std::string, stop_ids, "", "Stop token ids, comma-separated");
ABSL_FLAG(int, logprobs, -1, "-1: none; n >= 0: each token's logprob and the n best");
ABSL_FLAG(std::string, request_id, "", "Client request id (for abort)");
ABSL_FLAG(int, priority, 0, "Request priority");
ABSL_FLAG(int64_t, timeout_ms, 0, "Call deadline in ms; 0: none");
ABSL_FLAG(bool, json, false, "generate: print one JSON object at the end");
ABSL_FLAG(double, wait_s, 0, "health: how long to wait for SERVING");

namespace lserve {
namespace {

int Fail(const absl::Status& status) {
  std::cerr << "lserve: " << status << "\n";
  return 1;
}

template <typename Message>
int PrintJson(const Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) return 1;
  std::cout << json << "\n";
  return 0;
}

int Main(const std::vector<char*>& args) {
  if (args.size() < 2) {
    std::cerr << "usage: lserve generate|info|load|abort|health [flags]\n";
    return 2;
  }
  const std::string command = args[1];
  ClientOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  options.tls = {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                 absl::GetFlag(FLAGS_tls_ca), false};
  options.api_key = absl::GetFlag(FLAGS_api_key);
  if (options.api_key.empty() && std::getenv("LSERVE_API_KEY") != nullptr) {
    options.api_key = std::getenv("LSERVE_API_KEY");
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  if (!client.ok()) return Fail(client.status());
  if (command == "info") {
    auto info = (*client)->ModelInfo();
    return info.ok() ? PrintJson(*info) : Fail(info.status());
  }
  if (command == "load") {
    auto load = (*client)->Load();
    return load.ok() ? PrintJson(*load) : Fail(load.status());
  }
  if (command == "health") {
    const absl::Status status = (*client)->WaitServing(
        std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_wait_s) * 1000)));
    if (!status.ok()) return Fail(status);
    std::cout << "SERVING\n";
    return 0;
  }
  if (command == "abort") {
    const absl::Status status = (*client)->Abort(absl::GetFlag(FLAGS_request_id));
    return status.ok() ? 0 : Fail(status);
  }
  if (command != "generate") {
    std::cerr << "lserve: unknown command '" << command << "'\n";
    return 2;
  }
  v1::GenerateRequest request;
  std::string prompt_ids = absl::GetFlag(FLAGS_prompt_ids);
  if (!absl::GetFlag(FLAGS_prompt_ids_file).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_prompt_ids_file));
    if (!in) {
      return Fail(
          absl::NotFoundError(absl::StrCat("cannot read ", absl::GetFlag(FLAGS_prompt_ids_file))));
    }
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    prompt_ids =
        absl::StrJoin(absl::StrSplit(text, absl::ByAnyChar(", \t\n"), absl::SkipEmpty()), ",");
  }
  auto prompt = ParseTokenIds(prompt_ids, "prompt_ids");
  if (!prompt.ok()) return Fail(prompt.status());
  auto stops = ParseTokenIds(absl::GetFlag(FLAGS_stop_ids), "stop_ids");
  if (!stops.ok()) return Fail(stops.status());
  for (int32_t id : *prompt) request.add_prompt_token_ids(id);
  request.set_request_id(absl::GetFlag(FLAGS_request_id));
  request.set_priority(absl::GetFlag(FLAGS_priority));
  v1::SamplingParams* s = request.mutable_sampling();
  s->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  s->set_temperature(absl::GetFlag(FLAGS_temperature));
  s->set_top_k(absl::GetFlag(FLAGS_top_k));
  s->set_top_p(absl::GetFlag(FLAGS_top_p));
  s->set_seed(absl::GetFlag(FLAGS_seed));
  for (int32_t id : *stops) s->add_stop_token_ids(id);
  if (absl::GetFlag(FLAGS_logprobs) >= 0) {
    s->set_logprobs(true);
    s->set_top_logprobs(absl::GetFlag(FLAGS_logprobs));
  }
  const bool json = absl::GetFlag(FLAGS_json);
  // Client-side latencies of the first and second tokens, printed with --json.
  const auto start = std::chrono::steady_clock::now();
  std::vector<double> token_times;
  auto result = (*client)->Generate(
      request,
      [json, start, &token_times](const v1::GenerateResponse& response) {
        for (int i = 0; i < response.tokens_size() && token_times.size() < 2; ++i) {
          token_times.push_back(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        }
        if (json) return;
        for (const auto& token : response.tokens()) std::printf("%d ", token.token_id());
        std::fflush(stdout);
      },
      std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms)));
  if (!result.ok()) {
    if (!json) std::printf("\n");
    return Fail(result.status());
  }
  if (!json) {
    std::printf("\n");
    return 0;
  }
  v1::GenerateResponse summary;
  for (const auto& token : result->tokens) *summary.add_tokens() = token;
  summary.set_finish_reason(result->finish_reason);
  *summary.mutable_timings() = result->timings;
  summary.set_request_id(request.request_id());
  std::fprintf(stderr, "client: first token %.4f s, second token %.4f s, total %.4f s\n",
               token_times.empty() ? -1.0 : token_times[0],
               token_times.size() < 2 ? -1.0 : token_times[1],
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return PrintJson(summary);
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("lserve generate|info|load|abort|health [flags]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  return lserve::Main(args);
}
