#include "router/worker_registry.h"

#include <algorithm>
#include <future>

#include "common/logging.h"

namespace lserve {

bool WorkerState::Serves(Pool pool) const {
  if (role == v1::WORKER_ROLE_UNIFIED || role == v1::WORKER_ROLE_UNSPECIFIED) return true;
  return pool == Pool::kPrefill ? role == v1::WORKER_ROLE_PREFILL : role == v1::WORKER_ROLE_DECODE;
}

v1::Load WorkerState::load() const {
  std::lock_guard<std::mutex> lock(load_mu_);
  return load_;
}

void WorkerState::set_load(v1::Load load) {
  std::lock_guard<std::mutex> lock(load_mu_);
  load_ = std::move(load);
}

void WorkerState::Attach(Cancellation* call) {
  std::lock_guard<std::mutex> lock(calls_mu_);
  calls_.insert(call);
}

void WorkerState::Detach(Cancellation* call) {
  std::lock_guard<std::mutex> lock(calls_mu_);
  calls_.erase(call);
}

void WorkerState::CancelCalls() {
  std::lock_guard<std::mutex> lock(calls_mu_);
  if (!calls_.empty()) {
    LOG(Warning) << "worker " << address << " is lost: cancelling " << calls_.size() << " calls";
  }
  for (Cancellation* call : calls_) call->Cancel();
}

WorkerRegistry::WorkerRegistry(WorkerClientFactory* factory, RegistryOptions options)
    : factory_(factory), options_(options) {}

WorkerRegistry::~WorkerRegistry() {
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (checker_.joinable()) checker_.join();
}

void WorkerRegistry::AddStatic(const std::string& address, v1::WorkerRole role) {
  std::lock_guard<std::mutex> lock(mu_);
  if (workers_.count(address) > 0) return;
  workers_[address] =
      std::make_shared<WorkerState>(address, role, factory_->Connect(address),
                                    options_.breaker_failures, options_.breaker_cooldown);
}

absl::Status WorkerRegistry::Register(const std::string& address, v1::WorkerRole role) {
  if (address.empty() || address.find(':') == std::string::npos) {
    return absl::InvalidArgumentError("a worker registers with its host:port");
  }
  bool fresh = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = workers_.find(address);
    if (it == workers_.end() || it->second->role != role) {
      auto worker =
          std::make_shared<WorkerState>(address, role, factory_->Connect(address),
                                        options_.breaker_failures, options_.breaker_cooldown);
      worker->registered = true;
      it = workers_.insert_or_assign(address, std::move(worker)).first;
      fresh = true;
    }
    it->second->last_heartbeat = std::chrono::steady_clock::now();
  }
  if (fresh) {
    LOG(Info) << "worker " << address << " registered";
    {
      std::lock_guard<std::mutex> lock(wake_mu_);
      check_now_ = true;  // check it now rather than at the next round
    }
    wake_.notify_all();
  }
  return absl::OkStatus();
}

std::vector<std::shared_ptr<WorkerState>> WorkerRegistry::Candidates(
    Pool pool, const std::vector<std::string>& exclude) {
  std::vector<std::shared_ptr<WorkerState>> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [address, worker] : workers_) {
    if (!worker->Serves(pool) || !worker->healthy || worker->draining) continue;
    if (std::find(exclude.begin(), exclude.end(), address) != exclude.end()) continue;
    if (worker->breaker.state() == CircuitBreaker::State::kOpen) continue;
    out.push_back(worker);
  }
  return out;
}

std::vector<std::shared_ptr<WorkerState>> WorkerRegistry::All() const {
  std::vector<std::shared_ptr<WorkerState>> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [address, worker] : workers_) out.push_back(worker);
  return out;
}

bool WorkerRegistry::HasPool(Pool pool) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [address, worker] : workers_) {
    if (worker->Serves(pool) && worker->healthy && !worker->draining) return true;
  }
  return false;
}

void WorkerRegistry::ReportSuccess(WorkerState& worker) { worker.breaker.OnSuccess(); }

void WorkerRegistry::ReportFailure(WorkerState& worker) {
  worker.breaker.OnFailure();
  if (worker.breaker.state() == CircuitBreaker::State::kOpen) {
    LOG(Warning) << "worker " << worker.address << ": circuit open after failures";
  }
}

void WorkerRegistry::CheckAll() {
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::shared_ptr<WorkerState>> dropped;
  {
    // Registered workers whose heartbeats stopped are gone.
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->second->registered && now - it->second->last_heartbeat > options_.heartbeat_timeout) {
        LOG(Warning) << "worker " << it->first << " stopped heartbeating; dropped";
        dropped.push_back(it->second);
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& worker : dropped) {
    worker->healthy = false;
    worker->CancelCalls();
  }
  std::vector<std::future<void>> checks;
  for (const std::shared_ptr<WorkerState>& worker : All()) {
    checks.push_back(std::async(std::launch::async, [this, worker] {
      const Deadline deadline = std::chrono::system_clock::now() + options_.health_interval;
      const absl::StatusOr<bool> healthy = worker->client->Healthy(deadline);
      absl::StatusOr<v1::Load> load = absl::UnavailableError("not polled");
      if (healthy.ok()) load = worker->client->GetLoad(deadline);
      std::lock_guard<std::mutex> lock(mu_);
      const bool was = worker->healthy;
      worker->healthy = healthy.ok() && load.ok();
      worker->draining = healthy.ok() && (!*healthy || (load.ok() && load->draining()));
      worker->failed_checks = worker->healthy ? 0 : worker->failed_checks + 1;
      if (load.ok()) worker->set_load(*std::move(load));
      if (worker->failed_checks == options_.lost_after_failed_checks) worker->CancelCalls();
      if (was != worker->healthy) {
        LOG(Info) << "worker " << worker->address << " is now "
                  << (worker->healthy ? "healthy" : "unreachable");
      }
    }));
  }
  for (auto& check : checks) check.wait();
}

void WorkerRegistry::StartChecking(std::function<void()> after_round) {
  after_round_ = std::move(after_round);
  checker_ = std::thread([this] { CheckLoop(); });
}

void WorkerRegistry::CheckLoop() {
  while (true) {
    CheckAll();
    if (after_round_) after_round_();
    std::unique_lock<std::mutex> lock(wake_mu_);
    wake_.wait_for(lock, options_.health_interval, [this] { return stop_ || check_now_; });
    if (stop_) return;
    check_now_ = false;
  }
}

}  // namespace lserve
