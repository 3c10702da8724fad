#include "tests/router/fake_worker.h"

#include <thread>

#include "absl/strings/str_cat.h"

namespace lserve::testing {

int32_t NextToken(const std::vector<int32_t>& context) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t token : context) h = (h ^ static_cast<uint32_t>(token)) * 1099511628211ull;
  return static_cast<int32_t>(h % 997) + 3;
}

std::vector<int32_t> Continue(std::vector<int32_t> prompt, int count) {
  std::vector<int32_t> out;
  for (int i = 0; i < count; ++i) {
    out.push_back(NextToken(prompt));
    prompt.push_back(out.back());
  }
  return out;
}

namespace {

absl::Status Dead(const std::string& address) {
  return absl::UnavailableError(absl::StrCat(address, " is down"));
}

std::vector<int32_t> PromptOf(const v1::GenerateRequest& request) {
  return {request.prompt_token_ids().begin(), request.prompt_token_ids().end()};
}

}  // namespace

absl::Status FakeWorker::Stream(std::vector<int32_t> context, int count,
                                const std::string& request_id, const StreamCallback& on_response,
                                Cancellation* cancel) {
  for (int i = 0; hold_streams && i < 10000; ++i) {
    if (cancel->cancelled()) return absl::CancelledError("cancelled");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (int i = 0; i < count; ++i) {
    if (cancel->cancelled()) return absl::CancelledError("cancelled");
    if (dead) return Dead(address_);
    if (fail_stream_after.load() == i) {
      fail_stream_after = -1;
      dead = true;  // the process died mid-stream
      return Dead(address_);
    }
    v1::GenerateResponse response;
    response.set_request_id(request_id);
    const int32_t token = NextToken(context);
    context.push_back(token);
    response.add_tokens()->set_token_id(token);
    on_response(response);
  }
  v1::GenerateResponse final;
  final.set_request_id(request_id);
  final.set_finish_reason(v1::FINISH_REASON_LENGTH);
  final.mutable_timings()->set_generated_tokens(count);
  on_response(final);
  return absl::OkStatus();
}

absl::Status FakeWorker::Generate(const v1::GenerateRequest& request, Deadline,
                                  const StreamCallback& on_response, Cancellation* cancel) {
  ++generate_calls;
  if (dead) return Dead(address_);
  if (!generate_error.ok()) return generate_error;
  return Stream(PromptOf(request), request.sampling().max_tokens(), request.request_id(),
                on_response, cancel);
}

absl::Status FakeWorker::Decode(const v1::DecodeRequest& request, Deadline,
                                const StreamCallback& on_response, Cancellation* cancel) {
  ++decode_calls;
  if (dead) return Dead(address_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = reserved_.find(request.reservation_id());
    if (it == reserved_.end() || !it->second) {
      return absl::FailedPreconditionError("reservation unknown or not filled");
    }
    reserved_.erase(it);  // now a running sequence, freed when the stream ends
  }
  std::vector<int32_t> context = PromptOf(request.request());
  context.push_back(request.first_token().token_id());
  return Stream(context, request.request().sampling().max_tokens() - 1,
                request.request().request_id(), on_response, cancel);
}

absl::StatusOr<v1::ReserveKvResponse> FakeWorker::ReserveKv(const v1::ReserveKvRequest&, Deadline) {
  if (dead) return Dead(address_);
  std::lock_guard<std::mutex> lock(mu_);
  v1::ReserveKvResponse response;
  response.set_reservation_id(next_id_++);
  reserved_[response.reservation_id()] = false;
  return response;
}

absl::StatusOr<v1::PrefillResponse> FakeWorker::Prefill(const v1::PrefillRequest& request, Deadline,
                                                        Cancellation*) {
  ++prefill_calls;
  if (dead) return Dead(address_);
  if (fail_prefill) return absl::UnavailableError("prefill failed");
  std::lock_guard<std::mutex> lock(mu_);
  v1::PrefillResponse response;
  response.set_kv_handle(next_id_++);
  leased_[response.kv_handle()] = PromptOf(request.request());
  response.mutable_first_token()->set_token_id(NextToken(PromptOf(request.request())));
  response.set_kv_bytes(1000);
  return response;
}

absl::StatusOr<v1::TransferKvResponse> FakeWorker::TransferKv(const v1::TransferKvRequest& request,
                                                              Deadline, Cancellation*) {
  ++transfer_calls;
  if (dead) return Dead(address_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (leased_.count(request.kv_handle()) == 0) return absl::NotFoundError("no such lease");
  }
  if (die_on_transfer) {
    dead = true;
    return Dead(address_);
  }
  if (cut_transfers.fetch_sub(1) > 0) return absl::UnavailableError("the KV stream was cut");
  if (absl::Status status = cluster_->Fill(request.target(), request.reservation_id());
      !status.ok()) {
    return status;
  }
  v1::TransferKvResponse response;
  response.set_bytes(1000);
  response.set_seconds(0.001);
  return response;
}

absl::Status FakeWorker::ReleaseKv(const v1::ReleaseKvRequest& request, Deadline) {
  if (dead) return Dead(address_);
  std::lock_guard<std::mutex> lock(mu_);
  if (request.reservation_id() != 0) {
    return reserved_.erase(request.reservation_id()) ? absl::OkStatus()
                                                     : absl::NotFoundError("no reservation");
  }
  return leased_.erase(request.kv_handle()) ? absl::OkStatus() : absl::NotFoundError("no lease");
}

absl::StatusOr<v1::Load> FakeWorker::GetLoad(Deadline) {
  if (dead) return Dead(address_);
  v1::Load load;
  load.set_running(0);
  return load;
}

absl::StatusOr<v1::ModelInfo> FakeWorker::GetModelInfo(Deadline) {
  if (dead) return Dead(address_);
  v1::ModelInfo info;
  info.set_name("fake");
  return info;
}

absl::StatusOr<bool> FakeWorker::Healthy(Deadline) {
  if (dead) return Dead(address_);
  return true;
}

size_t FakeWorker::reservations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reserved_.size();
}

size_t FakeWorker::leases() const {
  std::lock_guard<std::mutex> lock(mu_);
  return leased_.size();
}

std::shared_ptr<WorkerClient> FakeCluster::Connect(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& worker = workers_[address];
  if (worker == nullptr) worker = std::make_shared<FakeWorker>(this, address);
  return worker;
}

FakeWorker& FakeCluster::worker(const std::string& address) {
  return static_cast<FakeWorker&>(*Connect(address));
}

absl::Status FakeCluster::Fill(const std::string& target, uint64_t id) {
  FakeWorker& worker = this->worker(target);
  if (worker.dead) return Dead(target);
  std::lock_guard<std::mutex> lock(worker.mu_);
  auto it = worker.reserved_.find(id);
  if (it == worker.reserved_.end()) return absl::NotFoundError("no reservation");
  it->second = true;
  return absl::OkStatus();
}

}  // namespace lserve::testing
