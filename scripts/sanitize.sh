#!/usr/bin/env bash
# Builds the CPU code with sanitizers and runs tests under them:
#  * build-asan/: ASan + UBSan, the whole CPU test suite;
#  * build-tsan/: TSan, the tests whose code runs on several threads (the scheduler's
#    Submit/Abort against Step, the worker's engine loop and handler (and its device hand-off
#    protocol, whose receives end on other threads), the thread pool, the
#    metrics registry and its HTTP endpoint, and the router's handler, registry and
#    breakers).
# Any report fails the run (sanitizers halt on the first error).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs="${LSERVE_BUILD_JOBS:-$(nproc)}"
common=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLSERVE_CUDA=OFF -DLSERVE_BUILD_BENCH=OFF)

cmake -S . -B build-asan "${common[@]}" -DLSERVE_SANITIZE=address >/dev/null
ninja -C build-asan -j "${jobs}"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j "${jobs}" \
  -E clang_format_check)

cmake -S . -B build-tsan "${common[@]}" -DLSERVE_SANITIZE=thread >/dev/null
ninja -C build-tsan -j "${jobs}" scheduler_test thread_pool_test offline_test \
  worker_handler_test device_handoff_test early_handoff_test kv_stream_out_test queue_marks_test \
  registry_concurrency_test http_exporter_test router_handler_test router_parts_test
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --output-on-failure -j "${jobs}" \
  -R '^(SchedulerTest|ThreadPoolTest|GeneratorTest|WorkerHandlerTest|EngineLoopTest|KvWireTest|DeviceHandOffTest|EarlyHandOffTest|KvStreamOutTest|QueueMarksTest|KvPageRunsTest|MetricsConcurrencyTest|HttpExporterTest|RouterHandlerTest|CircuitBreakerTest|RoutingPolicyTest|WorkerRegistryTest)\.')
