#include "net/generate_stream_reactor.h"

#include "net/grpc_status.h"

namespace lserve::net {

void AddRetryHint(grpc::CallbackServerContext* context, const absl::Status& status) {
  if (context == nullptr || status.code() != absl::StatusCode::kResourceExhausted) return;
  context->AddTrailingMetadata("grpc-retry-pushback-ms", std::to_string(kRetryPushbackMs));
}

GenerateStreamReactor::GenerateStreamReactor(const Start& start,
                                             grpc::CallbackServerContext* context)
    : shared_(std::make_shared<Shared>()) {
  shared_->reactor = this;
  shared_->context = context;
  std::weak_ptr<Shared> weak = shared_;
  absl::StatusOr<std::function<void()>> cancel =
      start([weak](const v1::GenerateResponse& response, bool final, const absl::Status& status) {
        if (auto shared = weak.lock()) Push(*shared, response, final, status);
      });
  std::unique_lock<std::mutex> lock(shared_->mu);
  if (!cancel.ok()) {
    shared_->finishing = true;
    AddRetryHint(context, cancel.status());
    lock.unlock();
    Finish(ToGrpcStatus(cancel.status()));
    return;
  }
  cancel_ = *std::move(cancel);
  started_ = true;
  if (cancelled_ && cancel_) cancel_();
}

void GenerateStreamReactor::OnWriteDone(bool ok) {
  std::unique_lock<std::mutex> lock(shared_->mu);
  shared_->writing = false;
  if (!ok) {
    // The client is gone; OnCancel stops the work. Drop what is queued.
    shared_->queue.clear();
    if (!shared_->finishing) {
      shared_->finishing = true;
      lock.unlock();
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
    }
    return;
  }
  WriteNext(*shared_, lock);
}

void GenerateStreamReactor::OnCancel() {
  std::lock_guard<std::mutex> lock(shared_->mu);
  cancelled_ = true;
  if (started_ && cancel_) cancel_();
}

void GenerateStreamReactor::OnDone() {
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->reactor = nullptr;
  }
  delete this;
}

void GenerateStreamReactor::Push(Shared& shared, const v1::GenerateResponse& response, bool final,
                                 const absl::Status& status) {
  std::unique_lock<std::mutex> lock(shared.mu);
  if (shared.reactor == nullptr || shared.finishing) return;
  if (!shared.queue.empty() && shared.queue.back().finish_reason() == 0 &&
      !shared.queue.back().has_timings()) {
    // Merge into the response still waiting to be written.
    shared.queue.back().mutable_tokens()->MergeFrom(response.tokens());
    shared.queue.back().set_finish_reason(response.finish_reason());
    if (response.has_timings()) *shared.queue.back().mutable_timings() = response.timings();
  } else if (response.tokens_size() > 0 || (final && status.ok())) {
    shared.queue.push_back(response);
  }
  if (final) {
    shared.final = true;
    shared.status = ToGrpcStatus(status);
    AddRetryHint(shared.context, status);
  }
  if (!shared.writing) WriteNext(shared, lock);
}

void GenerateStreamReactor::WriteNext(Shared& shared, std::unique_lock<std::mutex>& lock) {
  GenerateStreamReactor* reactor = shared.reactor;
  if (reactor == nullptr || shared.finishing) return;
  if (!shared.queue.empty()) {
    shared.writing_now = std::move(shared.queue.front());
    shared.queue.pop_front();
    shared.writing = true;
    lock.unlock();
    reactor->StartWrite(&shared.writing_now);
    return;
  }
  if (shared.final) {
    shared.finishing = true;
    const grpc::Status status = shared.status;
    lock.unlock();
    reactor->Finish(status);
  }
}

}  // namespace lserve::net
