// The synchroniser in one process (a Gloo group of one rank over an
// in-process store): its errors, its hooks and the compression identity,
// without starting processes.

#include "test_util.h"
#include "training.h"

#include <flora/distributed.h>
#include <flora/flora.h>

#include <torch/csrc/distributed/c10d/HashStore.hpp>

namespace flora::dist_test {
namespace {

using flora::distributed::GradientSynchronizer;
using flora::distributed::SynchronizerOptions;
using flora::testing::expect_error;

c10::intrusive_ptr<c10d::ProcessGroup> solo_group() {
  static auto group = flora::distributed::make_process_group(
      c10::make_intrusive<c10d::HashStore>(), 0, 1, 0,
      flora::distributed::InitOptions()
          .backend(flora::distributed::BackendKind::gloo)
          .gloo_hostname("127.0.0.1")
          .timeout(std::chrono::seconds(30)));
  return group;
}

void set_gradients(const Model& m, uint64_t seed) {
  for (auto p : m.params()) {
    p.mutable_grad() = flora::testing::randn_like_seeded(p, seed++);
  }
}

TEST(SingleRank, PlainExchangeOfOneRankKeepsEveryGradient) {
  Model m = make_model(1);
  GradientSynchronizer sync(m.params(), solo_group(), SynchronizerOptions().bucket_bytes(kBucketBytes));
  set_gradients(m, 5);
  std::vector<torch::Tensor> before;
  for (const auto& p : m.params()) {
    before.push_back(p.grad().clone());
  }
  const auto grad_tensor = m.w1.grad();
  sync.synchronize();
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(torch::equal(m.params()[i].grad(), before[i])) << "parameter " << i;
  }
  EXPECT_TRUE(m.w1.grad().is_same(grad_tensor)) << "plain gradients are written back in place";
  EXPECT_FALSE(sync.compressed(m.w1));
  EXPECT_EQ(sync.world_size(), 1);
  EXPECT_GT(sync.collectives(), 1) << "1 KiB buckets: several all-reduces";
}

TEST(SingleRank, CompressedExchangeIsTheAccumulatorsSketchBitForBit) {
  // With one rank, up(sum of one down(G)) is what an accumulator gives after
  // one micro-batch with the same seed; the second exchange uses the next
  // seed, as the accumulator's second take() does.
  Model m = make_model(1);
  Model ref = make_model(1);
  GradientSynchronizer sync(m.params(), solo_group(), SynchronizerOptions().compression_rank(kRank).seed(9));
  CompressedAccumulator acc({ref.w1, ref.w2}, AccumulationOptions(kRank).seed(9));
  EXPECT_TRUE(sync.compressed(m.w1));
  EXPECT_TRUE(sync.compressed(m.w2));
  EXPECT_FALSE(sync.compressed(m.emb)) << "aspect ratio 5 > 4";
  EXPECT_FALSE(sync.compressed(m.b1));
  for (uint64_t round = 0; round < 2; ++round) {
    set_gradients(m, 10 * round);
    set_gradients(ref, 10 * round);
    sync.synchronize();
    acc.accumulate();
    acc.restore();
    EXPECT_TRUE(torch::equal(m.w1.grad(), ref.w1.grad())) << "round " << round;
    EXPECT_TRUE(torch::equal(m.w2.grad(), ref.w2.grad())) << "round " << round;
    EXPECT_TRUE(torch::equal(m.emb.grad(), ref.emb.grad())) << "round " << round;
  }
}

TEST(SingleRank, ParametersWithoutAGradientKeepNone) {
  Model m = make_model(1);
  GradientSynchronizer sync(m.params(), solo_group(), SynchronizerOptions().compression_rank(kRank));
  m.w1.mutable_grad() = torch::ones_like(m.w1);
  sync.synchronize();
  EXPECT_TRUE(m.w1.grad().defined());
  EXPECT_FALSE(m.w2.grad().defined());
  EXPECT_FALSE(m.b1.grad().defined());
}

TEST(SingleRank, OverlapHooksExchangeDuringBackwardAndNoSyncAccumulates) {
  Model m = make_model(1);
  Model ref = make_model(1);
  GradientSynchronizer sync(m.params(), solo_group(), SynchronizerOptions().overlap(true).bucket_bytes(kBucketBytes));
  {
    auto guard = sync.no_sync();
    loss(m, make_batch(0, 0, 0)).backward(); // accumulates in .grad
  }
  EXPECT_TRUE(m.w1.grad().defined());
  loss(m, make_batch(0, 0, 1)).backward();
  EXPECT_FALSE(m.w1.grad().defined()) << "the hook moved the gradient into its bucket";
  EXPECT_GT(sync.collectives(), 0) << "all-reduces started inside backward";
  sync.synchronize();
  loss(ref, make_batch(0, 0, 0)).backward();
  loss(ref, make_batch(0, 0, 1)).backward();
  for (size_t i = 0; i < ref.params().size(); ++i) {
    EXPECT_TRUE(torch::equal(m.params()[i].grad(), ref.params()[i].grad())) << "parameter " << i;
  }
  // Two synchronised backward passes without synchronize() in between.
  loss(m, make_batch(1, 0, 0)).backward();
  expect_error([&] { loss(m, make_batch(1, 0, 1)).backward(); }, "completed twice before synchronize()");
}

TEST(SingleRank, FusedBackwardReducesInsideBackward) {
  Model m = make_model(1);
  Flora optimizer(m.params(), optimizer_options());
  FusedBackward fused(optimizer);
  GradientSynchronizer sync(fused, solo_group(), SynchronizerOptions().compression_rank(kRank));
  loss(m, make_batch(0, 0, 0)).backward();
  EXPECT_EQ(fused.updates(), 1);
  EXPECT_EQ(sync.collectives(), 5) << "one all-reduce per parameter";
  EXPECT_EQ(sync.bytes_exchanged(), sync.bytes_per_exchange());
  expect_error([&] { sync.synchronize(); }, "with a FusedBackward, gradients are reduced inside backward()");
  expect_error([&] { GradientSynchronizer second(fused, solo_group()); }, "a reduction is installed already");
}

TEST(SingleRank, RejectsBadOptionsAndCombinations) {
  Model m = make_model(1);
  auto group = solo_group();
  expect_error(
      [&] { GradientSynchronizer(m.params(), group, SynchronizerOptions().compression_rank(0)); },
      "compression_rank must be positive when set, got 0");
  expect_error(
      [&] { GradientSynchronizer(m.params(), group, SynchronizerOptions().bucket_bytes(0)); },
      "bucket_bytes must be positive, got 0");
  expect_error(
      [&] { GradientSynchronizer(m.params(), group, SynchronizerOptions().max_aspect_ratio(0.5)); },
      "max_aspect_ratio must be at least 1, got 0.5");
  expect_error(
      [&] { GradientSynchronizer(m.params(), group, SynchronizerOptions().timeout(std::chrono::milliseconds(0))); },
      "timeout must be positive when set, got 0 ms");
  CompressedAccumulator acc(m.params(), AccumulationOptions(kRank));
  expect_error(
      [&] { GradientSynchronizer(acc, group, SynchronizerOptions().compression_rank(kRank)); },
      "compression_rank (4) cannot be set together with an accumulator");
  expect_error(
      [&] { GradientSynchronizer(acc, group, SynchronizerOptions().overlap(true)); },
      "an accumulator's buffers are exchanged once, after the last micro-batch");
  Flora optimizer(m.params(), optimizer_options());
  FusedBackward fused(optimizer);
  expect_error(
      [&] { GradientSynchronizer(m.params(), group, SynchronizerOptions().overlap(true)); },
      "already has a post-accumulate-grad hook");
  expect_error(
      [&] { GradientSynchronizer(std::vector<torch::Tensor>{m.w1, m.w1}, group); }, "appears twice");
  expect_error(
      [&] { GradientSynchronizer(std::vector<torch::Tensor>{torch::Tensor()}, group); }, "parameter 0 is undefined");
}

TEST(SingleRank, BroadcastKeepsRankZerosValues) {
  Model m = make_model(1);
  const auto before = m.w1.detach().clone();
  GradientSynchronizer sync(m.params(), solo_group());
  sync.broadcast_parameters();
  EXPECT_TRUE(torch::equal(m.w1, before));
}

TEST(SingleRank, CheckpointOfTheSeedsRoundTrips) {
  Model m = make_model(1);
  GradientSynchronizer a(m.params(), solo_group(), SynchronizerOptions().compression_rank(kRank));
  set_gradients(m, 1);
  a.synchronize(); // seeds advance
  torch::serialize::OutputArchive out;
  a.save(out);
  std::ostringstream bytes;
  out.save_to(bytes);

  Model m2 = make_model(1);
  GradientSynchronizer b(m2.params(), solo_group(), SynchronizerOptions().compression_rank(kRank));
  torch::serialize::InputArchive in;
  std::istringstream stream(bytes.str());
  in.load_from(stream);
  b.load(in);
  set_gradients(m, 2);
  set_gradients(m2, 2);
  a.synchronize();
  b.synchronize();
  EXPECT_TRUE(torch::equal(m.w1.grad(), m2.w1.grad())) << "the loaded seeds continue where the saved left off";

  GradientSynchronizer plain(m2.params(), solo_group());
  torch::serialize::InputArchive again;
  std::istringstream stream2(bytes.str());
  again.load_from(stream2);
  expect_error([&] { plain.load(again); }, "goes plain here, but the checkpoint has a seed for it");
}

TEST(SingleRank, BytesPerExchangeFromShapes) {
  // (768, 3072) at rank 64: the sketch (64, 3072) replaces the matrix (the
  // smaller side shrinks to the rank); the embedding (50257, 768) fails the
  // aspect-ratio rule and goes plain.
  const std::vector<std::vector<int64_t>> shapes = {{768, 3072}, {50257, 768}, {768}};
  const int64_t plain = flora::distributed::bytes_per_exchange(shapes, torch::kFloat, SynchronizerOptions());
  const int64_t compressed =
      flora::distributed::bytes_per_exchange(shapes, torch::kFloat, SynchronizerOptions().compression_rank(64));
  EXPECT_EQ(plain, (768 * 3072 + 50257 * 768 + 768 + 3) * 4);
  EXPECT_EQ(compressed, (64 * 3072 + 50257 * 768 + 768 + 3) * 4);
}

} // namespace
} // namespace flora::dist_test
