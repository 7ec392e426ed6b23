// Data pipeline, learning-rate schedule, optimizer steppers, a short
// fine-tune of the tiny model with Adam and Flora, and the report files.

#include "gpt2_test_util.h"

#include "data.h"
#include "file_io.h"
#include "memory.h"
#include "plot.h"
#include "pretrained.h"
#include "report.h"
#include "stepper.h"
#include "train.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <flora/state_bytes.h>

#include <algorithm>
#include <chrono>
#include <limits>

namespace flora::gpt2 {
namespace {

// A short, silent run: `steps` optimizer steps of `batch` x `block` tokens,
// `warmup` warm-up steps, evaluated only at the end on `eval_blocks` blocks.
TrainOptions short_run(int64_t steps, int64_t batch, int64_t block, int64_t warmup, int64_t eval_blocks) {
  TrainOptions o;
  o.steps = steps;
  o.batch_size = batch;
  o.block_size = block;
  o.warmup_steps = warmup;
  o.eval_every = 0;
  o.eval_max_blocks = eval_blocks;
  o.log_every = 0;
  return o;
}

using testing::expect_error;

// The tiny model's operations are far too small to gain from several
// threads, and on a busy 2-core CI machine extra threads only contend (the
// example's --threads auto does the same).
class OneThread : public ::testing::Environment {
 public:
  void SetUp() override {
    torch::set_num_threads(1);
  }
};
const auto* const kOneThread = ::testing::AddGlobalTestEnvironment(new OneThread);

const Tokenizer& tiny_tokenizer() {
  static const Tokenizer tokenizer = Tokenizer::from_dir(testing::tiny_model_dir());
  return tokenizer;
}

const TokenSplit& corpus() {
  static const TokenSplit split = make_split(
      tiny_tokenizer(), {testing::example_file("data/train.txt")}, testing::example_file("data/valid.txt"), 0.0);
  return split;
}

TEST(Gpt2Data, EncodesTheCorpusAndSplits) {
  const auto& split = corpus();
  EXPECT_GT(split.train.numel(), 50000);
  EXPECT_GT(split.valid.numel(), 5000);
  EXPECT_EQ(split.train.scalar_type(), torch::kLong);
  EXPECT_LT(split.train.max().item<int64_t>(), 512);
  // A held-out fraction of the training text instead of a file.
  const auto fraction = make_split(tiny_tokenizer(), {testing::example_file("data/train.txt")}, "", 0.1);
  EXPECT_EQ(fraction.train.numel() + fraction.valid.numel(), split.train.numel());
  EXPECT_NEAR(static_cast<double>(fraction.valid.numel()) / static_cast<double>(split.train.numel()), 0.1, 1e-3);
  EXPECT_TRUE(torch::equal(fraction.valid, split.train.slice(0, fraction.train.numel())));
  expect_error([&] { make_split(tiny_tokenizer(), {testing::example_file("data/train.txt")}, "", 1.5); },
               "fraction must be in (0, 1)");
  // Several files are separated by <|endoftext|>.
  testing::TempDir dir;
  write_file_atomic(dir.file("a.txt"), "Hello");
  write_file_atomic(dir.file("b.txt"), "World");
  const auto ids = encode_files(tiny_tokenizer(), {dir.file("a.txt"), dir.file("b.txt")});
  EXPECT_EQ(tiny_tokenizer().decode(std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel())),
            "Hello<|endoftext|>World");
  expect_error([&] { encode_files(tiny_tokenizer(), {dir.file("missing.txt")}); }, "cannot open");
}

TEST(Gpt2Data, BatchesAreShiftedBlocksAndSeeded) {
  const auto tokens = torch::arange(1000, torch::kLong);
  BatchSampler a(tokens, 16, 4, 7), b(tokens, 16, 4, 7), c(tokens, 16, 4, 8);
  bool differs = false;
  for (int i = 0; i < 40; ++i) { // several epochs
    const auto [x, y] = a.next();
    const auto [x2, y2] = b.next();
    const auto [x3, y3] = c.next();
    ASSERT_EQ(x.sizes(), (c10::IntArrayRef{4, 16}));
    EXPECT_TRUE(torch::equal(y, x + 1)); // targets are the next tokens
    EXPECT_TRUE(torch::equal(x.select(1, 1), x.select(1, 0) + 1)); // contiguous blocks
    EXPECT_TRUE(torch::equal(x, x2));
    differs = differs || !torch::equal(x, x3);
  }
  EXPECT_TRUE(differs);
  EXPECT_GE(a.epoch(), 2);
  EXPECT_EQ(a.batches_per_epoch(), 999 / 16 / 4);
  expect_error([&] { BatchSampler(torch::arange(50, torch::kLong), 16, 4, 0); }, "the training text is too short");
  const auto [ex, ey] = eval_blocks(tokens, 100);
  EXPECT_EQ(ex.sizes(), (c10::IntArrayRef{9, 100}));
  EXPECT_TRUE(torch::equal(ey, ex + 1));
  EXPECT_EQ(eval_blocks(tokens, 100, 3).first.size(0), 3);
}

TEST(Gpt2Train, LearningRateSchedule) {
  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 1, 10, 100), 0.1);
  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 10, 10, 100), 1.0);
  EXPECT_NEAR(scheduled_lr(1.0, 55, 10, 100), 0.55, 1e-12); // half-way down the cosine
  EXPECT_NEAR(scheduled_lr(1.0, 100, 10, 100), 0.1, 1e-12);
  EXPECT_DOUBLE_EQ(scheduled_lr(2.0, 1, 0, 1), 0.2);
  for (int64_t s = 11; s < 100; ++s) {
    EXPECT_LE(scheduled_lr(1.0, s + 1, 10, 100), scheduled_lr(1.0, s, 10, 100));
  }
}

TEST(Gpt2Train, StepperValidatesOptions) {
  auto p = torch::zeros({4, 4}, torch::requires_grad());
  OptimizerSpec spec;
  spec.name = "sgd";
  expect_error([&] { make_stepper(spec, {p}); }, "unknown optimizer 'sgd'");
  spec = OptimizerSpec();
  spec.quantization = "8bit";
  expect_error([&] { make_stepper(spec, {p}); }, "--quantization 8bit applies to flora only, not adam");
  spec.quantization = "4bit";
  expect_error([&] { make_stepper(spec, {p}); }, "--quantization must be none or 8bit, got '4bit'");
  spec.quantization = "none";
  spec.fused_backward = true;
  expect_error([&] { make_stepper(spec, {p}); }, "--fused-backward applies to flora only, not adam");
  spec = OptimizerSpec();
  spec.name = "flora";
  spec.accumulation_rank = 8;
  expect_error([&] { make_stepper(spec, {p}); }, "--accumulation-rank 8 needs --grad-accum > 1");
  spec.accumulation_rank = 0;
  spec.lr = -1;
  expect_error([&] { make_stepper(spec, {p}); }, "flora: lr must be positive and finite, got -1");
  // Flora's own rules are flora::validate's, named as it names them.
  spec.lr = 0.1;
  spec.rank = -3;
  expect_error([&] { make_stepper(spec, {p}); }, "flora: rank must be positive when given, got -3");
  spec.rank = 32;
  spec.kappa = 0;
  expect_error([&] { make_stepper(spec, {p}); }, "flora: kappa must be positive, got 0");
  spec.kappa = 1000;
  spec.name = "adamw";
  spec.lr = 0;
  expect_error([&] { make_stepper(spec, {p}); }, "adamw: lr must be positive and finite, got 0");
  spec.name = "flora";
  spec.lr = 0.1;
  EXPECT_EQ(spec.label(), "flora(lr=0.1,rank=32,kappa=1000,b1=0.9)");
  auto stepper = make_stepper(spec, {p});
  stepper->set_lr(0.05);
  EXPECT_DOUBLE_EQ(stepper->optimizer().param_groups()[0].options().get_lr(), 0.05);
  EXPECT_EQ(parse_projection("reference"), ProjectionMode::reference);
  expect_error([&] { parse_projection("sobol"); }, "--projection must be philox or reference");
}

// The memory modes change where gradients live, not the arithmetic: with
// the same micro-batches, the fused stepper ends where the plain one does,
// and compressed accumulation (which is lossy) still trains.
TEST(Gpt2Train, MemoryModesTrain) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  const auto x = torch::randint(0, 512, {4, 16}, gen);
  const auto y = torch::randint(0, 512, {4, 16}, gen);
  auto run = [&](bool fused, int64_t accumulation_rank, const std::string& quantization) {
    auto model = load_pretrained(testing::tiny_model_dir());
    OptimizerSpec spec;
    spec.name = "flora";
    spec.lr = 0.05;
    spec.rank = 8;
    spec.fused_backward = fused;
    spec.accumulation_rank = accumulation_rank;
    spec.quantization = quantization;
    spec.micro_batches = 2;
    auto stepper = make_stepper(spec, model->parameters());
    double first = 0, last = 0;
    for (int step = 0; step < 6; ++step) {
      stepper->begin_step();
      double loss = 0;
      for (int micro = 0; micro < 2; ++micro) {
        auto l = model->loss(x.slice(0, 2 * micro, 2 * micro + 2), y.slice(0, 2 * micro, 2 * micro + 2)) / 2.0;
        loss += l.item<double>();
        stepper->backward(l, micro == 1);
      }
      stepper->finish_step();
      (step == 0 ? first : last) = loss;
    }
    for (const auto& p : model->parameters()) {
      EXPECT_FALSE(fused && p.grad().defined()) << "fused: gradients released";
    }
    return std::make_tuple(model, first, last);
  };
  const auto [plain, plain_first, plain_last] = run(false, 0, "none");
  const auto [fused, fused_first, fused_last] = run(true, 0, "none");
  const auto a = plain->named_parameters();
  const auto b = fused->named_parameters();
  for (const auto& item : a) {
    EXPECT_LT((item.value() - b[item.key()]).abs().max().item<double>(), 1e-5) << item.key();
  }
  for (const auto& [fused_mode, quantization] : {std::pair{false, "8bit"}, std::pair{true, "8bit"}}) {
    const auto [m, first, last] = run(fused_mode, 4, quantization);
    EXPECT_LT(last, first) << "fused " << fused_mode << " " << quantization;
  }
  EXPECT_LT(plain_last, plain_first);
}

TEST(Gpt2Train, GradientAccumulationAveragesMicroBatches) {
  // N micro-batches of b sequences, each loss scaled by 1/N, give the
  // gradient of the mean loss over all N*b sequences.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto x = torch::randint(0, 512, {4, 16}, gen);
  const auto y = torch::randint(0, 512, {4, 16}, gen);
  auto whole = load_pretrained(testing::tiny_model_dir());
  auto split = load_pretrained(testing::tiny_model_dir());
  OptimizerSpec spec;
  auto s1 = make_stepper(spec, whole->parameters());
  auto s2 = make_stepper(spec, split->parameters());
  s1->begin_step();
  s1->backward(whole->loss(x, y), true);
  s2->begin_step();
  s2->backward(split->loss(x.slice(0, 0, 2), y.slice(0, 0, 2)) / 2.0, false);
  s2->backward(split->loss(x.slice(0, 2, 4), y.slice(0, 2, 4)) / 2.0, true);
  const auto a = whole->named_parameters();
  const auto b = split->named_parameters();
  for (const auto& item : a) {
    EXPECT_LT((item.value().grad() - b[item.key()].grad()).abs().max().item<double>(), 1e-6) << item.key();
  }
}

TEST(Gpt2Train, ShortFineTuneLowersTheLossWithAdamAndFlora) {
  const auto start = std::chrono::steady_clock::now();
  TrainOptions options;
  options.steps = 20;
  options.batch_size = 8;
  options.block_size = 32;
  options.warmup_steps = 2;
  options.eval_every = 10;
  options.eval_max_blocks = 32;
  options.log_every = 0;
  options.final_loss_window = 5;
  std::vector<RunResult> runs;
  for (const char* name : {"adam", "flora"}) {
    OptimizerSpec spec;
    spec.name = name;
    spec.lr = spec.name == "flora" ? 0.3 : 3e-3;
    spec.rank = 16;
    auto model = load_pretrained(testing::tiny_model_dir());
    runs.push_back(train(model, corpus(), spec, options, torch::kCPU));
    const auto& r = runs.back();
    ASSERT_EQ(r.records.size(), 20u);
    double first = 0;
    for (int i = 0; i < 5; ++i) {
      first += r.records[i].train_loss / 5;
    }
    EXPECT_LT(r.final_train_loss, first - 0.3) << name;
    EXPECT_LT(r.eval_loss, r.initial_eval_loss - 0.3) << name;
    EXPECT_TRUE(std::isnan(r.records[4].eval_loss));
    EXPECT_FALSE(std::isnan(r.records[9].eval_loss));
    EXPECT_NEAR(r.eval_perplexity, std::exp(r.eval_loss), 1e-9);
    EXPECT_GT(r.state_bytes, 0);
    EXPECT_GT(r.tokens_per_s, 0);
    EXPECT_GT(r.peak.bytes, 0);
  }
  EXPECT_LT(runs[1].state_bytes, runs[0].state_bytes); // Flora keeps less state than Adam
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 60.0);

  // The report files.
  testing::TempDir dir;
  write_metrics_csv(dir.file("metrics.csv"), runs);
  write_summary_csv(dir.file("summary.csv"), runs);
  write_loss_svg(dir.file("loss.svg"), runs);
  const auto metrics = read_file(dir.file("metrics.csv"));
  EXPECT_EQ(metrics.rfind("optimizer,label,step,train_loss,eval_loss,lr,elapsed_s\n", 0), 0u);
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 1 + 2 * 21);
  EXPECT_NE(metrics.find("flora,\"flora(lr=0.3,rank=16,kappa=1000,b1=0.9)\",20,"), std::string::npos);
  const auto summary = read_file(dir.file("summary.csv"));
  EXPECT_EQ(std::count(summary.begin(), summary.end(), '\n'), 3);
  const auto svg = read_file(dir.file("loss.svg"));
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(std::count(svg.begin(), svg.end(), '\n') > 20, true);
  EXPECT_NE(svg.find("flora eval"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  if (png_supported()) {
    write_loss_png(dir.file("loss.png"), runs);
    const auto png = read_file(dir.file("loss.png"));
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  }
  EXPECT_EQ(csv_field("a,b\"c"), "\"a,b\"\"c\"");
}

TEST(Gpt2Train, ActivationCheckpointingTrainsIdentically) {
  auto options = short_run(3, 4, 32, 0, 4);
  OptimizerSpec spec;
  spec.name = "flora";
  spec.lr = 0.3;
  auto plain = load_pretrained(testing::tiny_model_dir());
  auto ckpt = load_pretrained(testing::tiny_model_dir());
  const auto a = train(plain, corpus(), spec, options, torch::kCPU);
  options.activation_checkpointing = true;
  const auto b = train(ckpt, corpus(), spec, options, torch::kCPU);
  for (size_t i = 0; i < a.records.size(); ++i) {
    EXPECT_NEAR(a.records[i].train_loss, b.records[i].train_loss, 1e-5);
  }
  const auto pa = plain->named_parameters();
  const auto pb = ckpt->named_parameters();
  for (const auto& item : pa) {
    EXPECT_LT((item.value() - pb[item.key()]).abs().max().item<double>(), 1e-5) << item.key();
  }
}

TEST(Gpt2Train, ADivergingRunStopsWithAReasonInsteadOfThrowing) {
  auto options = short_run(100, 8, 32, 5, 8);
  OptimizerSpec spec;
  spec.name = "flora";
  spec.lr = 5.0; // far too high: the loss explodes
  auto model = load_pretrained(testing::tiny_model_dir());
  const auto r = train(model, corpus(), spec, options, torch::kCPU);
  EXPECT_NE(r.failure.find("stopped at step"), std::string::npos) << r.failure;
  EXPECT_LT(r.records.size(), 100u);
  EXPECT_TRUE(std::isnan(r.eval_loss));
}

// --stats-every: Flora's update statistics sampled at step 1 and every N
// steps, one row per parameter, and written to statistics.csv.
TEST(Gpt2Train, StatisticsAreSampledAndWritten) {
  auto options = short_run(4, 4, 32, 1, 4);
  options.stats_every = 2;
  OptimizerSpec spec;
  spec.name = "flora";
  spec.lr = 0.08;
  spec.rank = 16;
  auto model = load_pretrained(testing::tiny_model_dir());
  const auto count = model->parameters().size();
  const auto r = train(model, corpus(), spec, options, torch::kCPU);
  ASSERT_TRUE(r.failure.empty()) << r.failure;
  ASSERT_EQ(r.statistics.size(), 3 * count); // steps 1, 2 and 4
  int compressed = 0, full = 0;
  for (const auto& s : r.statistics) {
    EXPECT_TRUE(s.step == 1 || s.step == 2 || s.step == 4);
    EXPECT_GT(s.update_rms, 0.0) << s.parameter;
    EXPECT_GT(s.clip_factor, 0.0);
    EXPECT_LE(s.clip_factor, 1.0);
    EXPECT_DOUBLE_EQ(s.clip_factor, 1.0 / std::max(1.0, s.update_rms));
    compressed += s.momentum == "compressed";
    full += s.momentum == "momentum";
  }
  EXPECT_GT(compressed, 0); // the blocks' 64-wide matrices at rank 16
  EXPECT_GT(full, 0);       // the embeddings (aspect ratio > 4) and the vectors
  EXPECT_EQ(r.statistics.front().parameter, model->named_parameters().begin()->key());

  testing::TempDir dir;
  write_statistics_csv(dir.file("statistics.csv"), {r});
  const auto text = read_file(dir.file("statistics.csv"));
  EXPECT_EQ(text.rfind("optimizer,label,step,parameter,shape,momentum,param_rms,update_rms,clip_factor\n", 0), 0u);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), static_cast<long>(r.statistics.size()) + 1);
  EXPECT_NE(text.find(",compressed,"), std::string::npos);

  // Adam has no such statistics.
  spec.name = "adam";
  spec.lr = 1e-3;
  auto adam_model = load_pretrained(testing::tiny_model_dir());
  EXPECT_TRUE(train(adam_model, corpus(), spec, options, torch::kCPU).statistics.empty());
}

TEST(Gpt2Memory, PeakCountsTheParameters) {
  const torch::Device cpu(torch::kCPU);
  const std::vector<torch::Tensor> params = {torch::zeros({1000}), torch::zeros({10, 10}, torch::kBFloat16)};
  const RunMemory memory(cpu, params);
  {
    auto t = torch::empty({1 << 20}); // 4 MiB, freed at once
  }
  const auto peak = memory.peak();
  EXPECT_EQ(peak.parameter_bytes, 4000 + 200);
  EXPECT_EQ(peak.bytes, 4000 + 200 + (4 << 20));
  EXPECT_NE(peak.kind.find("parameters included"), std::string::npos);
  EXPECT_EQ(storage_bytes({params[0], params[0].view({10, 100})}), 4000); // one storage, counted once
  EXPECT_GT(current_rss_bytes(), 0);
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_bytes(-1), "n/a");
}

// A run's peak holds at least its parameters, their gradients and the
// optimizer state (all alive at the end of a step), whatever was allocated
// before the run.
TEST(Gpt2Memory, RunPeakHoldsParametersGradientsAndState) {
  auto options = short_run(2, 4, 16, 0, 2);
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    auto model = load_pretrained(testing::tiny_model_dir(), dtype);
    int64_t numel = 0;
    for (const auto& p : model->parameters()) {
      numel += p.numel();
    }
    OptimizerSpec spec; // adam
    const auto r = train(model, corpus(), spec, options, torch::kCPU);
    ASSERT_TRUE(r.failure.empty()) << r.failure;
    EXPECT_EQ(r.peak.parameter_bytes, numel * static_cast<int64_t>(c10::elementSize(dtype)));
    EXPECT_GE(r.peak.bytes, 2 * r.peak.parameter_bytes + r.state_bytes);
  }
}

// bfloat16 parameters, activations and gradients; optimizer states in
// float32 (Adam, AdamW, Flora) or 8-bit; the loss goes down.
TEST(Gpt2Train, Bfloat16Trains) {
  auto options = short_run(20, 8, 32, 2, 16);
  options.final_loss_window = 5;
  for (const char* name : {"adam", "flora"}) {
    OptimizerSpec spec;
    spec.name = name;
    spec.lr = spec.name == "flora" ? 0.3 : 3e-3;
    spec.rank = 16;
    auto model = load_pretrained(testing::tiny_model_dir(), torch::kBFloat16);
    const auto r = train(model, corpus(), spec, options, torch::kCPU);
    ASSERT_TRUE(r.failure.empty()) << r.failure;
    double first = 0;
    for (int i = 0; i < 5; ++i) {
      first += r.records[i].train_loss / 5;
    }
    EXPECT_LT(r.final_train_loss, first - 0.3) << name;
    EXPECT_LT(r.eval_loss, r.initial_eval_loss - 0.3) << name;
    for (const auto& p : model->parameters()) {
      EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
    }
  }
  // Gradients in bfloat16; optimizer states as big as for float32
  // parameters (float32), for every optimizer, and Adam's tensors float32.
  for (const char* name : {"adam", "adamw", "flora"}) {
    int64_t state_bytes[2] = {0, 0};
    for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
      auto model = load_pretrained(testing::tiny_model_dir(), dtype);
      OptimizerSpec spec;
      spec.name = name;
      spec.lr = 1e-3;
      spec.rank = 8;
      auto stepper = make_stepper(spec, model->parameters());
      auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
      stepper->begin_step();
      stepper->backward(model->loss(torch::randint(0, 512, {2, 16}, gen), torch::randint(0, 512, {2, 16}, gen)), true);
      for (const auto& p : model->parameters()) {
        ASSERT_EQ(p.grad().scalar_type(), dtype);
      }
      const auto before = model->transformer->wte->weight.detach().clone();
      stepper->finish_step();
      EXPECT_FALSE(torch::equal(before, model->transformer->wte->weight)) << name << ": the step changed nothing";
      state_bytes[dtype == torch::kBFloat16] = stepper->state_bytes();
      for (const auto& [key, state] : stepper->optimizer().state()) {
        if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(state.get())) {
          EXPECT_EQ(adam->exp_avg().scalar_type(), torch::kFloat);
          EXPECT_EQ(adam->exp_avg_sq().scalar_type(), torch::kFloat);
        } else if (const auto* adamw = dynamic_cast<const torch::optim::AdamWParamState*>(state.get())) {
          EXPECT_EQ(adamw->exp_avg().scalar_type(), torch::kFloat);
          EXPECT_EQ(adamw->exp_avg_sq().scalar_type(), torch::kFloat);
        }
      }
    }
    EXPECT_GT(state_bytes[0], 0) << name;
    EXPECT_EQ(state_bytes[1], state_bytes[0]) << name;
  }
}

// --max-aspect-ratio inf compresses the momentum of the token embedding
// (512 x 64, aspect 8: a 512 x 8 momentum at rank 8 instead of 512 x 64):
// the state is what the library's estimate says for those options, and
// smaller than under flora-opt's rule.
TEST(Gpt2Train, UnlimitedAspectRatioCompressesTheEmbeddingMomentum) {
  auto options = short_run(2, 4, 16, 0, 2);
  int64_t state[2] = {0, 0};
  for (const double aspect : {4.0, std::numeric_limits<double>::infinity()}) {
    OptimizerSpec spec;
    spec.name = "flora";
    spec.lr = 0.1;
    spec.rank = 8;
    spec.max_aspect_ratio = aspect;
    auto model = load_pretrained(testing::tiny_model_dir());
    std::vector<std::vector<int64_t>> shapes;
    for (const auto& p : model->parameters()) {
      shapes.push_back(p.sizes().vec());
    }
    const auto r = train(model, corpus(), spec, options, torch::kCPU);
    ASSERT_TRUE(r.failure.empty()) << r.failure;
    EXPECT_EQ(r.state_bytes, estimate_state_bytes(shapes, flora_options(spec))) << aspect;
    state[std::isinf(aspect)] = r.state_bytes;
  }
  EXPECT_EQ(state[0] - state[1], 512 * (64 - 8) * 4); // the embedding's momentum, float32
}

// --stochastic-rounding: bfloat16 training that is reproducible for a seed
// and rounds differently from round-to-nearest.
TEST(Gpt2Train, StochasticRoundingOfBfloat16Parameters) {
  auto options = short_run(3, 4, 16, 0, 2);
  auto run = [&](bool stochastic) {
    OptimizerSpec spec;
    spec.name = "flora";
    spec.lr = 0.1;
    spec.rank = 8;
    spec.stochastic_rounding = stochastic;
    auto model = load_pretrained(testing::tiny_model_dir(), torch::kBFloat16);
    const auto r = train(model, corpus(), spec, options, torch::kCPU);
    EXPECT_TRUE(r.failure.empty()) << r.failure;
    EXPECT_EQ(r.label.find(",sr") != std::string::npos, stochastic) << r.label;
    return r.parameter_digest;
  };
  const auto nearest = run(false);
  const auto stochastic = run(true);
  EXPECT_NE(stochastic, nearest);
  EXPECT_EQ(run(true), stochastic); // seeded: the same bits again
}

// A run stopped after step 3 with a checkpoint and resumed continues
// exactly: the same parameters bit for bit and the same loss curve as the
// run that never stopped, for plain steps, compressed accumulation, the
// fused backward with 8-bit states, and Adam over bfloat16 parameters.
TEST(Gpt2Checkpoint, AResumedRunContinuesBitForBit) {
  TrainOptions options;
  options.steps = 6;
  options.batch_size = 4;
  options.block_size = 16;
  options.warmup_steps = 2;
  options.eval_every = 3; // at step 3 both runs evaluate (the stopped one evaluates where it stops)
  options.eval_max_blocks = 2;
  options.log_every = 0;
  struct Case {
    std::string what;
    OptimizerSpec spec;
    int64_t micro_batches;
    torch::Dtype dtype;
  };
  std::vector<Case> cases;
  OptimizerSpec flora;
  flora.name = "flora";
  flora.lr = 0.1;
  flora.rank = 8;
  flora.kappa = 2; // a resample after the resume too
  cases.push_back({"flora", flora, 1, torch::kFloat});
  OptimizerSpec accumulating = flora;
  accumulating.accumulation_rank = 8;
  cases.push_back({"flora, compressed accumulation", accumulating, 2, torch::kFloat});
  OptimizerSpec fused = flora;
  fused.fused_backward = true;
  fused.quantization = "8bit";
  fused.stochastic_rounding = true;
  cases.push_back({"flora, fused, 8-bit, stochastic rounding", fused, 1, torch::kBFloat16});
  OptimizerSpec variant = flora;
  variant.momentum_projection = MomentumProjection::orthonormal;
  variant.momentum_rescale = true;
  cases.push_back({"flora, orthonormal rescaled momentum", variant, 1, torch::kFloat});
  OptimizerSpec subspace = flora;
  subspace.momentum_projection = MomentumProjection::subspace;
  subspace.quantization = "8bit";
  cases.push_back({"flora, subspace momentum, 8-bit", subspace, 1, torch::kFloat});
  cases.push_back({"adam", OptimizerSpec(), 1, torch::kBFloat16});
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const testing::TempDir dir;
    auto o = options;
    o.grad_accum = c.micro_batches;
    auto straight_model = load_pretrained(testing::tiny_model_dir(), c.dtype);
    const auto straight = train(straight_model, corpus(), c.spec, o, torch::kCPU);
    ASSERT_TRUE(straight.failure.empty()) << straight.failure;

    o.checkpoint_file = dir.file("run.pt");
    o.stop_after = 3;
    auto first_model = load_pretrained(testing::tiny_model_dir(), c.dtype);
    const auto first = train(first_model, corpus(), c.spec, o, torch::kCPU);
    ASSERT_EQ(first.records.size(), 3u);
    EXPECT_NE(first.parameter_digest, straight.parameter_digest);
    o.stop_after = 0;
    o.resume = true;
    auto resumed_model = load_pretrained(testing::tiny_model_dir(), c.dtype); // overwritten by the checkpoint
    const auto resumed = train(resumed_model, corpus(), c.spec, o, torch::kCPU);
    ASSERT_TRUE(resumed.failure.empty()) << resumed.failure;
    EXPECT_EQ(resumed.resumed_at, 3);
    EXPECT_EQ(resumed.parameter_digest, straight.parameter_digest);
    ASSERT_EQ(resumed.records.size(), straight.records.size());
    for (size_t i = 0; i < straight.records.size(); ++i) {
      EXPECT_EQ(resumed.records[i].train_loss, straight.records[i].train_loss) << "step " << i + 1;
      EXPECT_EQ(std::isnan(resumed.records[i].eval_loss), std::isnan(straight.records[i].eval_loss)) << i + 1;
      if (!std::isnan(straight.records[i].eval_loss)) {
        EXPECT_EQ(resumed.records[i].eval_loss, straight.records[i].eval_loss) << "step " << i + 1;
      }
    }
    EXPECT_EQ(resumed.initial_eval_loss, straight.initial_eval_loss);
    EXPECT_EQ(resumed.eval_loss, straight.eval_loss);
  }
}

TEST(Gpt2Checkpoint, ACheckpointOfAnotherRunIsRefused) {
  const testing::TempDir dir;
  auto options = short_run(4, 2, 16, 1, 2);
  options.checkpoint_file = dir.file("run.pt");
  options.stop_after = 2;
  OptimizerSpec spec;
  spec.name = "flora";
  spec.lr = 0.1;
  auto model = load_pretrained(testing::tiny_model_dir());
  ASSERT_TRUE(train(model, corpus(), spec, options, torch::kCPU).failure.empty());
  options.resume = true;
  options.stop_after = 0;
  auto other = options;
  other.seed = 5;
  expect_error([&] { train(model, corpus(), spec, other, torch::kCPU); }, "is of another run: it has seed=0, this run seed=5");
  other = options;
  other.batch_size = 3;
  expect_error([&] { train(model, corpus(), spec, other, torch::kCPU); }, "batch size=2, this run batch size=3");
  auto rank16 = spec;
  rank16.rank = 16;
  expect_error([&] { train(model, corpus(), rank16, options, torch::kCPU); }, "rank=16");
  // The momentum variants shape the run: a checkpoint of another is refused.
  auto orthonormal = spec;
  orthonormal.momentum_projection = MomentumProjection::orthonormal;
  expect_error([&] { train(model, corpus(), orthonormal, options, torch::kCPU); }, ",orthonormal");
  auto rescaled = spec;
  rescaled.momentum_rescale = true;
  expect_error([&] { train(model, corpus(), rescaled, options, torch::kCPU); }, ",rescale");
  auto bf16 = load_pretrained(testing::tiny_model_dir(), torch::kBFloat16);
  expect_error([&] { train(bf16, corpus(), spec, options, torch::kCPU); }, "dtype=Float, this run dtype=BFloat16");
  other = options;
  other.checkpoint_file = dir.file("missing.pt");
  expect_error([&] { train(model, corpus(), spec, other, torch::kCPU); }, "cannot read the checkpoint");
  write_file_atomic(dir.file("junk.pt"), "not a checkpoint");
  other.checkpoint_file = dir.file("junk.pt");
  expect_error([&] { train(model, corpus(), spec, other, torch::kCPU); }, "cannot read the checkpoint");
  // The right flags continue.
  EXPECT_EQ(train(model, corpus(), spec, options, torch::kCPU).resumed_at, 2);
}

} // namespace
} // namespace flora::gpt2
