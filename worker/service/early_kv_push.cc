#include "worker/service/early_kv_push.h"

#include <condition_variable>
#include <utility>

#include "common/logging.h"

namespace lserve {
namespace {

// Outcomes nobody collected (the router went away) are dropped after this.
constexpr std::chrono::minutes kUncollectedFor{10};

// The pages of a sequence whose last chunk is being computed, pinned by the scheduler
// when the step started; the source unpins them.
class StreamedKvSource final : public KvSource {
 public:
  StreamedKvSource(EngineLoop* loop, RequestId handle, KvPageExport pages,
                   std::shared_ptr<QueueMarks> marks)
      : loop_(loop), handle_(handle), pages_(std::move(pages)), marks_(std::move(marks)) {}
  ~StreamedKvSource() override {
    loop_->Post([loop = loop_, handle = handle_] { loop->scheduler().EndLeasedExport(handle); });
  }
  // Runs between steps, so after the one computing the KV.
  absl::StatusOr<KvSnapshot> ReadSnapshot() override {
    return loop_->Run<absl::StatusOr<KvSnapshot>>(
        [&] { return loop_->scheduler().ExportLeased(handle_); });
  }
  absl::StatusOr<KvPageExport> PinPages() override {
    if (taken_) return absl::FailedPreconditionError("the KV's pages are already pinned");
    taken_ = true;
    return pages_;
  }
  const KvPool& dense_pool() const override { return loop_->engine().kv_store().dense_pool(); }
  const KvPool& streaming_pool() const override {
    return loop_->engine().kv_store().streaming_pool();
  }
  QueueMarks* layer_marks() override { return marks_.get(); }

 private:
  EngineLoop* loop_;
  RequestId handle_;
  KvPageExport pages_;
  std::shared_ptr<QueueMarks> marks_;
  bool taken_ = false;
};

}  // namespace

class EarlyKvPushes::Stream final : public KvStreamOut,
                                    public std::enable_shared_from_this<Stream> {
 public:
  Stream(EarlyKvPushes* owner, std::string target, uint64_t reservation_id,
         SteadyClock::time_point deadline)
      : owner_(owner),
        target_(std::move(target)),
        reservation_id_(reservation_id),
        deadline_(deadline) {}

  void Start(RequestId id, KvPageExport pages, std::shared_ptr<QueueMarks> marks) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      started_ = true;
    }
    const bool launched = owner_->Launch([self = shared_from_this(), id, pages = std::move(pages),
                                          marks = std::move(marks)]() mutable {
      self->Run(id, std::move(pages), std::move(marks));
    });
    if (launched) return;
    std::lock_guard<std::mutex> lock(mu_);
    started_ = false;
    owner_->loop_->scheduler().EndLeasedExport(id);  // this is the engine thread
  }

  bool Matches(const std::string& target, uint64_t reservation_id) const {
    return target == target_ && reservation_id == reservation_id_;
  }

  std::optional<absl::StatusOr<KvPushResult>> Wait(SteadyClock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!started_) return std::nullopt;
    if (!done_.wait_until(lock, deadline, [&] { return outcome_.has_value(); })) {
      return absl::StatusOr<KvPushResult>(
          absl::DeadlineExceededError("the KV hand-off started during the prefill still runs"));
    }
    return *outcome_;
  }

 private:
  void Run(RequestId id, KvPageExport pages, std::shared_ptr<QueueMarks> marks) {
    ++owner_->started_;
    absl::StatusOr<KvPushResult> pushed;
    {
      StreamedKvSource source(owner_->loop_, id, std::move(pages), std::move(marks));
      pushed = owner_->transport_->Push(target_, reservation_id_, source, deadline_);
    }
    if (!pushed.ok()) {
      LOG(Warning) << "KV hand-off of " << id << " during its prefill failed (it is sent again "
                   << "when asked): " << pushed.status();
    }
    std::lock_guard<std::mutex> lock(mu_);
    outcome_ = std::move(pushed);
    done_.notify_all();
  }

  EarlyKvPushes* owner_;
  const std::string target_;
  const uint64_t reservation_id_;
  const SteadyClock::time_point deadline_;
  std::mutex mu_;
  std::condition_variable done_;
  bool started_ = false;
  std::optional<absl::StatusOr<KvPushResult>> outcome_;
};

EarlyKvPushes::~EarlyKvPushes() {
  std::vector<Worker> workers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
    workers.swap(workers_);
  }
  for (Worker& worker : workers) worker.thread.join();
}

std::shared_ptr<KvStreamOut> EarlyKvPushes::NewStream(std::string target, uint64_t reservation_id,
                                                      SteadyClock::time_point deadline) {
  return std::make_shared<Stream>(this, std::move(target), reservation_id, deadline);
}

void EarlyKvPushes::Register(RequestId handle, std::shared_ptr<KvStreamOut> stream) {
  auto ours = std::dynamic_pointer_cast<Stream>(std::move(stream));
  if (ours == nullptr) return;
  const SteadyClock::time_point now = SteadyClock::now();
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(by_handle_,
                [&](const auto& entry) { return now - entry.second.since > kUncollectedFor; });
  by_handle_[handle] = {std::move(ours), now};
}

std::optional<absl::StatusOr<KvPushResult>> EarlyKvPushes::Collect(
    RequestId handle, const std::string& target, uint64_t reservation_id,
    SteadyClock::time_point deadline) {
  std::shared_ptr<Stream> stream;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_handle_.find(handle);
    if (it == by_handle_.end()) return std::nullopt;
    stream = std::move(it->second.stream);
    by_handle_.erase(it);
  }
  if (!stream->Matches(target, reservation_id)) return std::nullopt;
  return stream->Wait(deadline);
}

void EarlyKvPushes::Forget(RequestId handle) {
  std::lock_guard<std::mutex> lock(mu_);
  by_handle_.erase(handle);
}

bool EarlyKvPushes::Launch(std::function<void()> work) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closing_) return false;
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (!it->finished->load()) {
      ++it;
      continue;
    }
    it->thread.join();
    it = workers_.erase(it);
  }
  auto finished = std::make_shared<std::atomic<bool>>(false);
  workers_.push_back({std::thread([work = std::move(work), finished] {
                        work();
                        finished->store(true);
                      }),
                      finished});
  return true;
}

}  // namespace lserve
