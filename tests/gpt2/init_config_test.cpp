// Untrained GPT-2 models from a named configuration (--init-config): their
// shapes, GPT-2's initialisation, and training from scratch.

#include "gpt2_test_util.h"

#include "cli.h"
#include "finetune.h"
#include "init_config.h"
#include "train.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

namespace flora::gpt2 {
namespace {

using testing::expect_error;

TEST(Gpt2InitConfig, NamedConfigurationsHaveTheirPublishedShapes) {
  const auto gpt2 = named_config("gpt2");
  EXPECT_EQ(gpt2.n_layer, 12);
  EXPECT_EQ(gpt2.n_head, 12);
  EXPECT_EQ(gpt2.n_embd, 768);
  EXPECT_EQ(gpt2.n_positions, 1024);
  EXPECT_EQ(gpt2.vocab_size, 50257);
  EXPECT_EQ(gpt2.inner_dim(), 3072);
  EXPECT_TRUE(gpt2.tie_word_embeddings);
  EXPECT_EQ(gpt2.activation_function, "gelu_new");
  const auto medium = named_config("gpt2-medium");
  EXPECT_EQ(medium.n_layer, 24);
  EXPECT_EQ(medium.n_head, 16);
  EXPECT_EQ(medium.n_embd, 1024);
  EXPECT_EQ(medium.n_positions, 1024);
  EXPECT_EQ(medium.vocab_size, 50257);
  const auto tiny = named_config("tiny");
  const auto shipped = load_config(testing::tiny_model_dir() + "/config.json");
  EXPECT_EQ(tiny.n_layer, shipped.n_layer);
  EXPECT_EQ(tiny.n_embd, shipped.n_embd);
  EXPECT_EQ(tiny.vocab_size, shipped.vocab_size);
  expect_error([] { named_config("gpt3"); }, "unknown GPT-2 configuration 'gpt3'");
  expect_error([] { sized_config(2, 30, 4, 64, 100); }, "n_embd (30) must be divisible by n_head (4)");
}

// Per tensor: the sample mean and standard deviation of normal(0, std)
// draws are within 5 standard errors of 0 and std.
void expect_normal(const std::string& name, const torch::Tensor& t, double std) {
  const auto x = t.to(torch::kDouble);
  const double n = static_cast<double>(x.numel());
  EXPECT_LT(std::abs(x.mean().item<double>()), 5 * std / std::sqrt(n)) << name;
  EXPECT_LT(std::abs(x.std().item<double>() - std), 5 * std / std::sqrt(2 * n)) << name;
}

TEST(Gpt2InitConfig, CustomModelHasGpt2ShapesAndInitialisation) {
  const int64_t layers = 3, embd = 96, heads = 4, positions = 128, vocab = 600;
  torch::manual_seed(11);
  GPT2LMHeadModel model(sized_config(layers, embd, heads, positions, vocab));
  const auto params = model->named_parameters();
  EXPECT_EQ(params.size(), static_cast<size_t>(2 + 12 * layers + 2)); // wte, wpe, 12 per block, ln_f
  const std::map<std::string, std::vector<int64_t>> shapes = {
      {"transformer.wte.weight", {vocab, embd}},
      {"transformer.wpe.weight", {positions, embd}},
      {"transformer.ln_f.weight", {embd}},
      {"transformer.h.2.attn.c_attn.weight", {embd, 3 * embd}},
      {"transformer.h.2.attn.c_attn.bias", {3 * embd}},
      {"transformer.h.2.attn.c_proj.weight", {embd, embd}},
      {"transformer.h.2.mlp.c_fc.weight", {embd, 4 * embd}},
      {"transformer.h.2.mlp.c_proj.weight", {4 * embd, embd}},
      {"transformer.h.2.ln_2.bias", {embd}},
  };
  for (const auto& [name, shape] : shapes) {
    ASSERT_TRUE(params.contains(name)) << name;
    EXPECT_EQ(params[name].sizes(), c10::IntArrayRef(shape)) << name;
  }
  const double residual_std = 0.02 / std::sqrt(2.0 * layers);
  int residual = 0, normal = 0;
  for (const auto& item : params) {
    const std::string& name = item.key();
    const auto& p = item.value();
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (bias) {
      EXPECT_EQ(p.abs().max().item<double>(), 0.0) << name;
    } else if (name.find(".ln_") != std::string::npos) {
      EXPECT_TRUE(torch::equal(p, torch::ones_like(p))) << name;
    } else if (name.find("c_proj.weight") != std::string::npos) {
      expect_normal(name, p, residual_std);
      ++residual;
    } else {
      expect_normal(name, p, 0.02);
      ++normal;
    }
  }
  EXPECT_EQ(residual, 2 * layers);         // attn.c_proj and mlp.c_proj of each block
  EXPECT_EQ(normal, 2 + 2 * layers);       // wte, wpe, c_attn, c_fc
}

TEST(Gpt2InitConfig, UntrainedModelLearnsFromScratch) {
  testing::TempDir dir;
  const auto command_line = parse_command_line(
      {"--init-config", "custom", "--n-layer", "2", "--n-embd", "64", "--n-head", "4", "--n-positions", "64",
       "--optimizer", "adam", "--steps", "30", "--warmup-steps", "3", "--batch-size", "8", "--block-size", "32",
       "--eval-every", "0", "--eval-max-blocks", "16", "--log-every", "0", "--seed", "5", "--out", dir.path()});
  const auto plan = prepare_run(command_line.settings);
  EXPECT_EQ(plan.config.vocab_size, plan.tokenizer->vocab_size()); // default: the tokenizer's size
  EXPECT_EQ(plan.config.n_layer, 2);
  // Every run of a comparison starts from the same weights.
  auto model = initial_model(plan);
  auto again = initial_model(plan);
  for (const auto& item : model->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), again->named_parameters()[item.key()])) << item.key();
  }
  auto options = plan.settings.train;
  options.final_loss_window = 5;
  const auto r = train(model, plan.split, plan.specs.at(0), options, plan.device);
  ASSERT_TRUE(r.failure.empty()) << r.failure;
  // Small initial weights: the first prediction is close to uniform.
  EXPECT_NEAR(r.initial_eval_loss, std::log(static_cast<double>(plan.config.vocab_size)), 0.1);
  double first = 0;
  for (int i = 0; i < 5; ++i) {
    first += r.records[i].train_loss / 5;
  }
  EXPECT_LT(r.final_train_loss, first - 0.5);
  EXPECT_LT(r.eval_loss, r.initial_eval_loss - 0.5);
}

TEST(Gpt2InitConfig, ModelVocabularyCoversTheTokenizer) {
  testing::TempDir dir;
  // gpt2's 50257 rows hold the shipped tokenizer's 512 tokens (the rest are
  // never an input); fewer rows than tokens are refused.
  const auto plan = prepare_run(parse_command_line({"--init-config", "gpt2", "--out", dir.path()}).settings);
  EXPECT_EQ(plan.config.vocab_size, 50257);
  EXPECT_EQ(plan.tokenizer->vocab_size(), 512);
  try {
    prepare_run(parse_command_line({"--init-config", "custom", "--n-layer", "1", "--n-embd", "8", "--n-head", "2",
                                    "--vocab-size", "511", "--out", dir.path()})
                    .settings);
    ADD_FAILURE() << "a vocabulary smaller than the tokenizer's was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--vocab-size '511': the model's vocab_size 511 is smaller than the "
                                         "tokenizer's 512 tokens"),
              std::string::npos)
        << e.what();
  }
}

} // namespace
} // namespace flora::gpt2
