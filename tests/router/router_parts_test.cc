// The router's parts one by one: the circuit breaker's states, each routing policy, API
// keys, the registry (registration, heartbeats, health, draining) and config validation.
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "gtest/gtest.h"
#include "router/api_keys.h"
#include "router/circuit_breaker.h"
#include "router/router_config.h"
#include "router/routing_policy.h"
#include "tests/router/fake_worker.h"

namespace lserve {
namespace {

using State = CircuitBreaker::State;

TEST(CircuitBreakerTest, OpensAfterFailuresAndLetsOneTrialThroughAfterTheCooldown) {
  CircuitBreaker breaker(3, std::chrono::seconds(10));
  const auto t0 = CircuitBreaker::Clock::now();
  breaker.OnFailure(t0);
  breaker.OnFailure(t0);
  EXPECT_EQ(breaker.state(t0), State::kClosed);
  breaker.OnSuccess();  // successes reset the count
  breaker.OnFailure(t0);
  breaker.OnFailure(t0);
  EXPECT_TRUE(breaker.Allow(t0));
  breaker.OnFailure(t0);
  EXPECT_EQ(breaker.state(t0), State::kOpen);
  EXPECT_FALSE(breaker.Allow(t0 + std::chrono::seconds(9)));
  const auto later = t0 + std::chrono::seconds(11);
  EXPECT_EQ(breaker.state(later), State::kHalfOpen);
  EXPECT_TRUE(breaker.Allow(later));   // the trial
  EXPECT_FALSE(breaker.Allow(later));  // only one at a time
  breaker.OnFailure(later);            // the trial failed: open again
  EXPECT_EQ(breaker.state(later + std::chrono::seconds(1)), State::kOpen);
  const auto much_later = later + std::chrono::seconds(11);
  EXPECT_TRUE(breaker.Allow(much_later));
  breaker.OnSuccess();
  EXPECT_EQ(breaker.state(much_later), State::kClosed);
  // A trial that never reports gives way to another after a cooldown.
  for (int i = 0; i < 3; ++i) breaker.OnFailure(much_later);
  const auto t1 = much_later + std::chrono::seconds(11);
  EXPECT_TRUE(breaker.Allow(t1));
  EXPECT_FALSE(breaker.Allow(t1 + std::chrono::seconds(5)));
  EXPECT_TRUE(breaker.Allow(t1 + std::chrono::seconds(11)));
}

std::vector<std::shared_ptr<WorkerState>> Workers(int n) {
  std::vector<std::shared_ptr<WorkerState>> workers;
  for (int i = 0; i < n; ++i) {
    workers.push_back(std::make_shared<WorkerState>("w" + std::to_string(i) + ":1",
                                                    v1::WORKER_ROLE_UNIFIED, nullptr, 3,
                                                    std::chrono::seconds(1)));
  }
  return workers;
}

TEST(RoutingPolicyTest, RoundRobinCyclesThroughTheCandidates) {
  auto workers = Workers(3);
  RoundRobinPolicy policy;
  std::vector<std::string> picked;
  for (int i = 0; i < 6; ++i) picked.push_back(policy.Pick(workers, {})->address);
  EXPECT_EQ(picked, (std::vector<std::string>{"w0:1", "w1:1", "w2:1", "w0:1", "w1:1", "w2:1"}));
}

TEST(RoutingPolicyTest, LeastLoadedPrefersTheLessLoadedOfTwo) {
  auto workers = Workers(2);
  v1::Load busy;
  busy.set_running(10);
  workers[0]->set_load(busy);
  LeastLoadedPolicy policy(7);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(policy.Pick(workers, {})->address, "w1:1");
  // The router's own in-flight requests count at once, before the next load report.
  workers[1]->in_flight = 11;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(policy.Pick(workers, {})->address, "w0:1");
  // Over many equal workers, picks spread.
  auto many = Workers(8);
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) seen.insert(policy.Pick(many, {})->address);
  EXPECT_EQ(seen.size(), 8u);
}

TEST(RoutingPolicyTest, PrefixAwareSendsAPrefixToOneWorkerAndMovesLittleWhenOneLeaves) {
  auto workers = Workers(4);
  PrefixAwarePolicy policy(2, 16);
  std::map<int, std::string> owner;
  std::map<std::string, int> per_worker;
  for (int prefix = 0; prefix < 200; ++prefix) {
    std::vector<int32_t> prompt(40);
    for (int i = 0; i < 40; ++i) prompt[i] = i < 32 ? prefix * 1000 + i : 99;
    owner[prefix] = policy.Pick(workers, {prompt})->address;
    // A different tail past the hashed pages lands on the same worker.
    prompt[35] = 12345;
    EXPECT_EQ(policy.Pick(workers, {prompt})->address, owner[prefix]);
    ++per_worker[owner[prefix]];
  }
  EXPECT_EQ(per_worker.size(), 4u);
  for (const auto& [address, count] : per_worker) EXPECT_GT(count, 20) << address;
  // Without w3, only w3's prefixes move.
  auto three = workers;
  three.pop_back();
  for (int prefix = 0; prefix < 200; ++prefix) {
    std::vector<int32_t> prompt(40);
    for (int i = 0; i < 40; ++i) prompt[i] = i < 32 ? prefix * 1000 + i : 99;
    if (owner[prefix] != "w3:1") {
      EXPECT_EQ(policy.Pick(three, {prompt})->address, owner[prefix]);
    }
  }
}

TEST(ApiKeysTest, BearerKeysFromAFileAndTheEnvironment) {
  const std::string file = ::testing::TempDir() + "/keys";
  std::ofstream(file) << "# team keys\nalpha-key\n\n  beta-key  \n";
  setenv("LSERVE_TEST_KEYS", "gamma-key, delta-key", 1);
  auto keys = ApiKeys::Load(file, "LSERVE_TEST_KEYS");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_TRUE(keys->enabled());
  for (const char* key : {"alpha-key", "beta-key", "gamma-key", "delta-key"}) {
    EXPECT_TRUE(keys->Check(std::string("Bearer ") + key).ok()) << key;
  }
  for (const char* bad : {"", "alpha-key", "Bearer alpha", "Bearer alpha-key2", "Basic alpha-key",
                          "Bearer ", "Bearer # team keys"}) {
    EXPECT_EQ(keys->Check(bad).code(), absl::StatusCode::kUnauthenticated) << bad;
  }
  EXPECT_FALSE(ApiKeys::Load("", "").value().enabled());
  EXPECT_EQ(ApiKeys::Load(file + ".missing", "").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ApiKeys::Load("", "LSERVE_TEST_UNSET_VARIABLE").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(WorkerRegistryTest, RegistrationHealthDrainingAndHeartbeatTimeout) {
  testing::FakeCluster cluster;
  RegistryOptions options;
  options.heartbeat_timeout = std::chrono::milliseconds(100);
  WorkerRegistry registry(&cluster, options);
  registry.AddStatic("static:1", v1::WORKER_ROLE_PREFILL);
  EXPECT_EQ(registry.Register("no-port", v1::WORKER_ROLE_DECODE).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(registry.Register("dyn:1", v1::WORKER_ROLE_DECODE).ok());
  // Nothing is a candidate before its first health check.
  EXPECT_TRUE(registry.Candidates(Pool::kDecode, {}).empty());
  registry.CheckAll();
  ASSERT_EQ(registry.Candidates(Pool::kDecode, {}).size(), 1u);
  EXPECT_EQ(registry.Candidates(Pool::kPrefill, {}).size(), 1u);
  EXPECT_TRUE(registry.Candidates(Pool::kDecode, {"dyn:1"}).empty());
  cluster.worker("static:1").dead = true;
  registry.CheckAll();
  EXPECT_TRUE(registry.Candidates(Pool::kPrefill, {}).empty());
  EXPECT_FALSE(registry.HasPool(Pool::kPrefill));
  // A registered worker that stops heartbeating is dropped; a static one stays listed.
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  registry.CheckAll();
  EXPECT_TRUE(registry.Candidates(Pool::kDecode, {}).empty());
  EXPECT_EQ(registry.All().size(), 1u);
  // An open breaker takes a worker out until its cooldown passes.
  cluster.worker("static:1").dead = false;
  registry.CheckAll();
  auto worker = registry.Candidates(Pool::kPrefill, {}).at(0);
  for (int i = 0; i < 3; ++i) registry.ReportFailure(*worker);
  EXPECT_TRUE(registry.Candidates(Pool::kPrefill, {}).empty());
}

TEST(RouterConfigTest, DefaultsValidateAndBadValuesAreNamed) {
  v1::RouterConfig config;
  ApplyRouterDefaults(&config);
  EXPECT_TRUE(ValidateRouterConfig(config).ok());
  EXPECT_EQ(config.listen_address(), "127.0.0.1:50050");
  auto expect_invalid = [&](auto edit, const std::string& field) {
    v1::RouterConfig bad = config;
    edit(bad);
    const absl::Status status = ValidateRouterConfig(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(status.message().find(field), std::string::npos) << status;
  };
  expect_invalid([](v1::RouterConfig& c) { c.add_workers()->set_address("nohost"); }, "workers");
  expect_invalid([](v1::RouterConfig& c) { c.set_max_attempts(50); }, "max_attempts");
  expect_invalid([](v1::RouterConfig& c) { c.set_health_interval_s(-1); }, "health_interval_s");
  expect_invalid([](v1::RouterConfig& c) { c.set_heartbeat_timeout_s(0.001); },
                 "heartbeat_timeout_s");
  expect_invalid([](v1::RouterConfig& c) { c.mutable_tls()->set_cert_file("x.pem"); }, "tls");
  expect_invalid([](v1::RouterConfig& c) { c.set_max_message_bytes(10); }, "max_message_bytes");
  auto parsed = ParseRouterConfig(
      "workers { address: 'a:1' role: WORKER_ROLE_DECODE }\n"
      "decode_policy: ROUTING_POLICY_PREFIX_AWARE",
      "router.textproto");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->workers(0).address(), "a:1");
  EXPECT_EQ(parsed->decode_policy(), v1::ROUTING_POLICY_PREFIX_AWARE);
  auto broken = ParseRouterConfig("workers { adress: 'a:1' }", "router.textproto");
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(broken.status().message().find("router.textproto:1"), std::string::npos);
}

}  // namespace
}  // namespace lserve
