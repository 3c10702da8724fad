// The receiving side of the NCCL KV hand-off on a decode worker (NcclKvLinkReceiver).
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "worker/service/nccl_kv_transport.h"

namespace lserve {

using SteadyClock = std::chrono::steady_clock;

NcclKvLinkReceiver::~NcclKvLinkReceiver() {
  std::vector<Waiter> waiters;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, link] : links_) link->Abort("the worker is shutting down");
    for (Waiter& waiter : waiters_) waiter.link->Abort("the worker is shutting down");
    waiters.swap(waiters_);
  }
  for (Waiter& waiter : waiters) waiter.thread.join();
}

absl::StatusOr<int64_t> NcclKvLinkReceiver::Open(uint64_t link_id, std::string_view unique_id,
                                                 SteadyClock::time_point deadline) {
  absl::StatusOr<std::unique_ptr<nccl::NcclLink>> opened =
      nccl::NcclLink::Open(unique_id, 1, device_, deadline);
  if (!opened.ok()) return opened.status();
  std::shared_ptr<nccl::NcclLink> link = *std::move(opened);
  const int64_t bytes = link->device_bytes();
  std::lock_guard<std::mutex> lock(mu_);
  CloseIdleLocked(SteadyClock::now());
  links_[link_id] = link;
  last_used_[link_id] = SteadyClock::now();
  link_order_.remove(link_id);
  link_order_.push_back(link_id);
  while (links_.size() > max_links_) {
    links_.erase(link_order_.front());  // a receive still waiting keeps its link alive
    last_used_.erase(link_order_.front());
    link_order_.pop_front();
  }
  return bytes;
}

void NcclKvLinkReceiver::CloseIdleLocked(SteadyClock::time_point now) {
  for (auto it = links_.begin(); it != links_.end();) {
    const uint64_t id = it->first;
    if (receiving_.count(id) > 0 || now - last_used_[id] < idle_close_) {
      ++it;
      continue;
    }
    LOG(Info) << "NCCL KV link " << id << " unused for " << idle_close_.count() / 1000
              << " s: closing it";
    it->second->Abort("unused");
    it = links_.erase(it);
    last_used_.erase(id);
    link_order_.remove(id);
  }
}

void NcclKvLinkReceiver::ReapWaiters() {
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (!it->finished->load()) {
      ++it;
      continue;
    }
    it->thread.join();
    it = waiters_.erase(it);
  }
}

absl::Status NcclKvLinkReceiver::PostReceive(uint64_t link_id, std::vector<KvByteRange> ranges,
                                             SteadyClock::time_point deadline,
                                             std::function<void(absl::Status)> done) {
  std::lock_guard<std::mutex> lock(mu_);
  ReapWaiters();
  CloseIdleLocked(SteadyClock::now());
  auto it = links_.find(link_id);
  if (it == links_.end() || it->second->broken()) {
    return absl::NotFoundError(absl::StrCat("no open NCCL link ", link_id));
  }
  if (!receiving_.insert(link_id).second) {
    return absl::AlreadyExistsError(absl::StrCat("NCCL link ", link_id, " is still receiving"));
  }
  last_used_[link_id] = SteadyClock::now();
  std::shared_ptr<nccl::NcclLink> link = it->second;
  // The receives are posted and waited for on a thread of their own: the sender posts
  // its sends only once this call has answered.
  auto finished = std::make_shared<std::atomic<bool>>(false);
  std::thread waiter([this, link, link_id, deadline, finished, done = std::move(done),
                      receives = ToNcclRanges(ranges)]() mutable {
    absl::Status outcome = link->Transfer(receives, deadline);
    {
      std::lock_guard<std::mutex> lock(mu_);
      receiving_.erase(link_id);
      if (last_used_.count(link_id) > 0) last_used_[link_id] = SteadyClock::now();
      auto found = links_.find(link_id);
      if (!outcome.ok() && found != links_.end() && found->second == link) {
        links_.erase(found);
        last_used_.erase(link_id);
        link_order_.remove(link_id);
      }
    }
    done(outcome);
    finished->store(true);
  });
  waiters_.push_back({std::move(waiter), finished, link});
  return absl::OkStatus();
}

void NcclKvLinkReceiver::Close(uint64_t link_id) {
  std::shared_ptr<nccl::NcclLink> link;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(link_id);
    if (it == links_.end()) return;
    link = it->second;
    links_.erase(it);
    last_used_.erase(link_id);
    link_order_.remove(link_id);
  }
  link->Abort("the sender closed the link");
}

}  // namespace lserve
