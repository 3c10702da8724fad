// A prefill-only request's KV streamed out during its last chunk: the scheduler starts
// the stream once, inside that step, with the pages the KV ends up in; each layer's
// bytes are final once its queue mark is placed; and the pages stay pinned (past a
// release or the lease's end) until the stream lets go.
#include "worker/scheduler/kv_stream_out.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/engine_test_util.h"
#include "tests/worker/scheduler/scheduler_test_util.h"
#include "worker/scheduler/scheduler.h"

namespace lserve {
namespace {

using testing::Greedy;
using testing::Ids;
using testing::MakeTinyEngine;

// Copies each layer of the pages as soon as its mark is placed, on its own thread.
class CopyingStream : public KvStreamOut {
 public:
  explicit CopyingStream(const KvStore* kv) : kv_(kv) {}
  ~CopyingStream() override {
    if (copier_.joinable()) copier_.join();
  }
  void Start(RequestId id, KvPageExport pages, std::shared_ptr<QueueMarks> marks) override {
    ++starts;
    started_id = id;
    exported = pages;
    marks_ = marks;
    copier_ = std::thread([this, marks] {
      const KvPool* pools[] = {&kv_->dense_pool(), &kv_->streaming_pool()};
      for (int layer = 0; layer < marks->size(); ++layer) {
        if (!marks->WaitPlaced(layer, SteadyClock::now() + std::chrono::seconds(30)).ok()) return;
        copies.push_back(LayerBytes(layer, pools));
      }
    });
  }
  // Layer `layer` of every exported page, both pools.
  std::vector<uint8_t> LayerBytes(int layer, const KvPool* const* pools) const {
    std::vector<uint8_t> bytes;
    const std::vector<int32_t>* lists[] = {&exported.pages.dense, &exported.pages.streaming};
    for (int p = 0; p < 2; ++p) {
      if (layer >= pools[p]->num_layers() || pools[p]->PageBytes(layer) == 0) continue;
      const size_t page_bytes = pools[p]->PageBytes(layer);
      const uint8_t* base = static_cast<const uint8_t*>(pools[p]->LayerBase(layer));
      for (int32_t page : *lists[p]) {
        bytes.insert(bytes.end(), base + page * page_bytes, base + (page + 1) * page_bytes);
      }
    }
    return bytes;
  }
  void Join() { copier_.join(); }

  int starts = 0;
  RequestId started_id = 0;
  KvPageExport exported;
  std::vector<std::vector<uint8_t>> copies;

 private:
  const KvStore* kv_;
  std::shared_ptr<QueueMarks> marks_;
  std::thread copier_;
};

int64_t UsedPages(const Engine& engine) {
  const KvUsage usage = engine.kv_store().Usage();
  return usage.dense_used + usage.streaming_used;
}

TEST(KvStreamOutTest, StartsOnceInTheLastChunkAndEachLayerIsFinalAtItsMark) {
  auto engine = MakeTinyEngine();
  SchedulerOptions options;
  options.max_step_tokens = 16;  // a 50-token prompt takes four chunks
  auto scheduler = *Scheduler::Create(engine.get(), options);
  auto stream = std::make_shared<CopyingStream>(&engine->kv_store());
  GenerationRequest request = Greedy(Ids(50, 1), 1);
  request.keep_kv = true;
  request.stream_kv = stream;
  const RequestId id = *scheduler->Submit(request);
  int step_of_start = -1, steps = 0;
  bool leased = false;
  while (scheduler->HasWork() && steps < 20) {
    for (const RequestEvent& event : scheduler->Step()) leased = leased || event.kv_leased;
    ++steps;
    if (stream->starts > 0 && step_of_start < 0) step_of_start = steps;
  }
  ASSERT_TRUE(leased);
  EXPECT_EQ(stream->starts, 1);
  EXPECT_EQ(step_of_start, 4);  // the last chunk's step
  EXPECT_EQ(stream->started_id, id);
  stream->Join();
  // The pages and manifest given at the start are the lease's.
  const KvPageExport final_pages = *engine->kv_store().ExportPages(id);
  EXPECT_EQ(stream->exported.pages.dense, final_pages.pages.dense);
  EXPECT_EQ(stream->exported.pages.streaming, final_pages.pages.streaming);
  EXPECT_EQ(stream->exported.manifest.length, 50);
  EXPECT_EQ(stream->exported.manifest.streaming_indices, final_pages.manifest.streaming_indices);
  // Every layer copied at its mark already held its final bytes.
  const KvPool* pools[] = {&engine->kv_store().dense_pool(), &engine->kv_store().streaming_pool()};
  ASSERT_EQ(static_cast<int>(stream->copies.size()), engine->config().num_layers);
  for (int layer = 0; layer < engine->config().num_layers; ++layer) {
    EXPECT_EQ(stream->copies[layer], stream->LayerBytes(layer, pools)) << "layer " << layer;
  }
  // Pinned: a release waits for the stream's end.
  ASSERT_TRUE(scheduler->ReleaseLeased(id).ok());
  EXPECT_GT(UsedPages(*engine), 0);
  scheduler->EndLeasedExport(id);
  EXPECT_EQ(UsedPages(*engine), 0);
}

TEST(KvStreamOutTest, APinnedLeaseOutlivesItsExpiryUntilTheStreamEnds) {
  auto engine = MakeTinyEngine();
  auto scheduler = *Scheduler::Create(engine.get(), SchedulerOptions{});
  auto stream = std::make_shared<CopyingStream>(&engine->kv_store());
  GenerationRequest request = Greedy(Ids(20, 2), 1);
  request.keep_kv = true;
  request.kv_lease = std::chrono::milliseconds(0);
  request.stream_kv = stream;
  const RequestId id = *scheduler->Submit(request);
  testing::RunAll(*scheduler);
  stream->Join();
  ASSERT_EQ(stream->starts, 1);
  (void)scheduler->Step();  // expiry is checked here; the pin holds the pages
  EXPECT_GT(UsedPages(*engine), 0);
  EXPECT_EQ(scheduler->num_leased(), 1);
  scheduler->EndLeasedExport(id);
  (void)scheduler->Step();
  EXPECT_EQ(UsedPages(*engine), 0);
  EXPECT_EQ(scheduler->num_leased(), 0);
}

TEST(KvStreamOutTest, ARequestAbortedBeforeItsLastChunkNeverStartsItsStream) {
  auto engine = MakeTinyEngine();
  SchedulerOptions options;
  options.max_step_tokens = 16;
  auto scheduler = *Scheduler::Create(engine.get(), options);
  auto stream = std::make_shared<CopyingStream>(&engine->kv_store());
  GenerationRequest request = Greedy(Ids(50, 3), 1);
  request.keep_kv = true;
  request.stream_kv = stream;
  const RequestId id = *scheduler->Submit(request);
  (void)scheduler->Step();
  ASSERT_TRUE(scheduler->Abort(id).ok());
  testing::RunAll(*scheduler);
  EXPECT_EQ(stream->starts, 0);
  EXPECT_EQ(UsedPages(*engine), 0);
  EXPECT_EQ(scheduler->num_leased(), 0);
}

}  // namespace
}  // namespace lserve
