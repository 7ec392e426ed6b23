// The GPT-2 model against Hugging Face transformers (fixture logits and
// loss), parameter names, saving/loading model directories, configs, and
// activation checkpointing.

#include "gpt2_test_util.h"

#include "config.h"
#include "file_io.h"
#include "model.h"
#include "pretrained.h"
#include "safetensors.h"
#include "tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <set>

namespace flora::gpt2 {
namespace {

using testing::expect_error;

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

const std::map<std::string, torch::Tensor>& fixture_tensors() {
  static const auto tensors = load_safetensors(testing::fixture("logits.safetensors"));
  return tensors;
}

torch::Tensor fixture_logits_of(const std::string& dir) {
  auto model = load_pretrained(dir);
  model->eval();
  torch::NoGradGuard no_grad;
  return model->forward(fixture_tensors().at("input_ids"));
}

TEST(Gpt2Model, LogitsMatchTransformers) {
  const auto logits = fixture_logits_of(testing::tiny_model_dir());
  const auto& want = fixture_tensors().at("logits");
  ASSERT_EQ(logits.sizes(), want.sizes());
  EXPECT_LT(max_abs_diff(logits, want), 1e-5);
}

TEST(Gpt2Model, HalfPrecisionWeightsLoadIntoFloat32) {
  LoadReport report;
  auto model = load_pretrained(testing::fixture("tiny-gpt2-fp16"), torch::kFloat, torch::kCPU, &report);
  EXPECT_EQ(report.stored_dtype, "F16");
  EXPECT_EQ(model->transformer->wte->weight.scalar_type(), torch::kFloat);
  EXPECT_LT(max_abs_diff(fixture_logits_of(testing::fixture("tiny-gpt2-fp16")),
                         fixture_tensors().at("logits_fp16_weights")), 1e-5);
  load_pretrained(testing::fixture("tiny-gpt2-bf16"), torch::kFloat, torch::kCPU, &report);
  EXPECT_EQ(report.stored_dtype, "BF16");
  EXPECT_LT(max_abs_diff(fixture_logits_of(testing::fixture("tiny-gpt2-bf16")),
                         fixture_tensors().at("logits_bf16_weights")), 1e-5);
}

TEST(Gpt2Model, LossMatchesTransformers) {
  auto model = load_pretrained(testing::tiny_model_dir());
  model->eval();
  torch::NoGradGuard no_grad;
  const auto loss = model->lm_loss(fixture_tensors().at("input_ids"));
  EXPECT_NEAR(loss.item<double>(), fixture_tensors().at("loss").item<double>(), 1e-5);
}

TEST(Gpt2Model, ParameterNamesAreHuggingFaceNames) {
  auto model = load_pretrained(testing::tiny_model_dir());
  std::set<std::string> ours;
  for (const auto& item : model->named_parameters()) {
    ours.insert(item.key());
  }
  std::set<std::string> file;
  SafetensorsReader reader(testing::tiny_model_dir() + "/model.safetensors");
  for (const auto& t : reader.tensors()) {
    file.insert(t.name);
  }
  EXPECT_EQ(ours, file);
  EXPECT_EQ(ours.size(), 4u + 12u * 2u);
  EXPECT_EQ(ours.count("lm_head.weight"), 0u);
  EXPECT_EQ(ours.count("transformer.h.1.attn.c_attn.weight"), 1u);
  // Conv1D layout: (in, out).
  EXPECT_EQ(model->named_parameters()["transformer.h.0.attn.c_attn.weight"].sizes(), (c10::IntArrayRef{64, 192}));
  EXPECT_EQ(model->named_parameters()["transformer.h.0.mlp.c_proj.weight"].sizes(), (c10::IntArrayRef{256, 64}));
  // The head is tied to the token embedding.
  EXPECT_TRUE(model->output_embedding().is_same(model->transformer->wte->weight));
}

TEST(Gpt2Model, SaveAndReloadIsBitExact) {
  testing::TempDir dir;
  const auto tokenizer = Tokenizer::from_dir(testing::tiny_model_dir());
  auto model = load_pretrained(testing::tiny_model_dir());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) {
      p.add_(torch::randn_like(p) * 0.01); // "fine-tuned"
    }
  }
  save_pretrained(model, tokenizer, dir.path(), testing::tiny_model_dir());
  auto entries = dir.entries();
  std::sort(entries.begin(), entries.end());
  EXPECT_EQ(entries, (std::vector<std::string>{"config.json", "generation_config.json", "merges.txt",
                                               "model.safetensors", "special_tokens_map.json",
                                               "tokenizer_config.json", "vocab.json"}));
  SafetensorsReader reader(dir.file("model.safetensors"));
  EXPECT_EQ(reader.metadata().at("format"), "pt");
  EXPECT_FALSE(reader.contains("lm_head.weight"));
  EXPECT_EQ(read_file(dir.file("vocab.json")), read_file(testing::tiny_model_dir() + "/vocab.json"));
  EXPECT_EQ(read_file(dir.file("merges.txt")), read_file(testing::tiny_model_dir() + "/merges.txt"));

  auto reloaded = load_pretrained(dir.path());
  const auto a = model->named_parameters();
  const auto b = reloaded->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : a) {
    EXPECT_TRUE(torch::equal(item.value(), b[item.key()])) << item.key();
  }
  // config.json keeps the source's other fields.
  const auto config = nlohmann::json::parse(read_file(dir.file("config.json")));
  EXPECT_EQ(config["bos_token_id"], 511);
  EXPECT_EQ(config["model_type"], "gpt2");
  EXPECT_EQ(config["dtype"], "float32");
  EXPECT_EQ(config["n_embd"], 64);

  // Without a source directory the tokenizer files are written.
  testing::TempDir bare;
  save_pretrained(model, tokenizer, bare.path());
  const auto tokenizer_config = nlohmann::json::parse(read_file(bare.file("tokenizer_config.json")));
  EXPECT_EQ(tokenizer_config["tokenizer_class"], "GPT2Tokenizer");
  EXPECT_EQ(tokenizer_config["eos_token"], "<|endoftext|>");
  EXPECT_TRUE(is_file(bare.file("special_tokens_map.json")));
  EXPECT_FALSE(is_file(bare.file("generation_config.json")));
}

TEST(Gpt2Model, LoadsOriginalGpt2NamingAndSkipsBuffers) {
  // The original "gpt2" checkpoints name tensors without "transformer." and
  // carry the causal-mask buffers h.{i}.attn.bias.
  testing::TempDir dir;
  copy_file(testing::tiny_model_dir() + "/config.json", dir.file("config.json"));
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, t] : load_safetensors(testing::tiny_model_dir() + "/model.safetensors")) {
    tensors.emplace_back(name.substr(std::string("transformer.").size()), t);
  }
  tensors.emplace_back("h.0.attn.bias", torch::ones({1, 1, 128, 128}));
  tensors.emplace_back("lm_head.weight", torch::zeros({512, 64}));
  save_safetensors(dir.file("model.safetensors"), tensors);
  LoadReport report;
  auto model = load_pretrained(dir.path(), torch::kFloat, torch::kCPU, &report);
  std::sort(report.skipped.begin(), report.skipped.end());
  EXPECT_EQ(report.skipped, (std::vector<std::string>{"h.0.attn.bias", "lm_head.weight"}));
  EXPECT_LT(max_abs_diff(fixture_logits_of(dir.path()), fixture_tensors().at("logits")), 1e-5);
}

TEST(Gpt2Model, LoadErrorsNameTheProblem) {
  testing::TempDir dir;
  auto config = nlohmann::json::parse(read_file(testing::tiny_model_dir() + "/config.json"));
  config["vocab_size"] = 600;
  write_file_atomic(dir.file("config.json"), config.dump());
  expect_error([&] { load_pretrained(dir.path()); }, "no model.safetensors");
  copy_file(testing::tiny_model_dir() + "/model.safetensors", dir.file("model.safetensors"));
  expect_error([&] { load_pretrained(dir.path()); }, "transformer.wte.weight' in '");
  expect_error([&] { load_pretrained(dir.path()); }, "has shape [512, 64], the model's transformer.wte.weight has [600, 64]");
  // A missing parameter.
  config["vocab_size"] = 512;
  write_file_atomic(dir.file("config.json"), config.dump());
  auto tensors = load_safetensors(testing::tiny_model_dir() + "/model.safetensors");
  tensors.erase("transformer.ln_f.bias");
  save_safetensors(dir.file("model.safetensors"), tensors);
  expect_error([&] { load_pretrained(dir.path()); }, "1 parameter(s) missing from");
  expect_error([&] { load_pretrained(dir.path()); }, "transformer.ln_f.bias");
  expect_error([&] { load_pretrained(dir.file("nowhere")); }, "does not exist");
}

TEST(Gpt2Config, ParsesAndValidates) {
  const auto config = load_config(testing::tiny_model_dir() + "/config.json");
  EXPECT_EQ(config.n_layer, 2);
  EXPECT_EQ(config.n_head, 4);
  EXPECT_EQ(config.n_embd, 64);
  EXPECT_EQ(config.n_positions, 128);
  EXPECT_EQ(config.vocab_size, 512);
  EXPECT_EQ(config.inner_dim(), 256);
  EXPECT_EQ(config.activation_function, "gelu_new");
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(config.layer_norm_epsilon, 1e-5);
  // Round trip.
  const auto again = parse_config(config_to_json(config));
  EXPECT_EQ(again.n_layer, 2);
  EXPECT_EQ(again.n_inner, 0);

  const std::string base = R"("n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 128)";
  expect_error([&] { parse_config("{" + base + "}", "cfg"); }, "cfg: missing required field 'vocab_size'");
  expect_error([&] { parse_config(R"({"vocab_size": 10, "n_head": 4, "n_embd": 64, "n_positions": 128})"); },
               "missing required field 'n_layer'");
  expect_error([&] { parse_config("{" + base + R"(, "vocab_size": "many"})"); },
               "field 'vocab_size' must be an integer");
  expect_error([&] { parse_config("{" + base + R"(, "vocab_size": 0})"); }, "vocab_size must be positive");
  expect_error([&] { parse_config(R"({"vocab_size": 10, "n_layer": 2, "n_head": 5, "n_embd": 64, "n_positions": 8})"); },
               "n_embd (64) must be divisible by n_head (5)");
  expect_error([&] { parse_config("{" + base + R"(, "vocab_size": 10, "activation_function": "mish"})"); },
               "activation_function 'mish' is not supported");
  expect_error([&] { parse_config("{" + base + R"(, "vocab_size": 10, "tie_word_embeddings": 1})"); },
               "'tie_word_embeddings' must be true or false");
  expect_error([&] { parse_config("{" + base + R"(, "vocab_size": 10, "model_type": "llama"})"); },
               "only knows \"gpt2\"");
  expect_error([&] { parse_config("{" + base); }, "malformed JSON");
  // transformers' aliases and the activations.
  for (const char* act : {"gelu", "relu", "gelu_pytorch_tanh", "silu"}) {
    const auto c = parse_config(
        std::string(R"({"vocab_size": 10, "num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 8, )") +
        R"("max_position_embeddings": 16, "n_inner": 12, "activation_function": ")" + act + "\"}");
    EXPECT_EQ(c.n_layer, 1);
    EXPECT_EQ(c.inner_dim(), 12);
    GPT2LMHeadModel model(c);
    const auto logits = model->forward(torch::randint(0, 10, {2, 5}));
    EXPECT_EQ(logits.sizes(), (c10::IntArrayRef{2, 5, 10}));
  }
}

TEST(Gpt2Model, UntiedHeadIsItsOwnParameter) {
  auto config = load_config(testing::tiny_model_dir() + "/config.json");
  config.tie_word_embeddings = false;
  GPT2LMHeadModel model(config);
  EXPECT_TRUE(model->named_parameters().contains("lm_head.weight"));
  EXPECT_FALSE(model->output_embedding().is_same(model->transformer->wte->weight));
  testing::TempDir dir;
  save_pretrained(model, Tokenizer::from_dir(testing::tiny_model_dir()), dir.path());
  EXPECT_TRUE(SafetensorsReader(dir.file("model.safetensors")).contains("lm_head.weight"));
  auto reloaded = load_pretrained(dir.path());
  EXPECT_TRUE(torch::equal(reloaded->lm_head->weight, model->lm_head->weight));
  // The tiny model's file has no lm_head.weight, so it cannot fill an untied head.
  expect_error([&] { load_weights(model, {testing::tiny_model_dir() + "/model.safetensors"}); },
               "lm_head.weight (tie_word_embeddings is false)");
}

TEST(Gpt2Model, ActivationCheckpointingGivesTheSameGradients) {
  auto run = [](bool checkpointing, int micro_batches) {
    auto model = load_pretrained(testing::tiny_model_dir());
    model->train();
    model->set_activation_checkpointing(checkpointing);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
    const auto ids = torch::randint(0, 512, {4, 33}, gen);
    double total = 0;
    for (int m = 0; m < micro_batches; ++m) {
      const auto x = ids.slice(0, 0, 2 + 2 * m).slice(1, 0, 32);
      const auto y = ids.slice(0, 0, 2 + 2 * m).slice(1, 1, 33);
      auto loss = model->loss(x, y);
      loss.backward();
      total += loss.item<double>();
    }
    std::map<std::string, torch::Tensor> grads;
    for (const auto& item : model->named_parameters()) {
      grads[item.key()] = item.value().grad().clone();
    }
    return std::make_pair(total, grads);
  };
  for (const int micro : {1, 2}) {
    const auto [loss_plain, grads_plain] = run(false, micro);
    const auto [loss_ckpt, grads_ckpt] = run(true, micro);
    EXPECT_NEAR(loss_plain, loss_ckpt, 1e-6);
    ASSERT_EQ(grads_plain.size(), 28u);
    for (const auto& [name, g] : grads_plain) {
      ASSERT_TRUE(grads_ckpt.at(name).defined()) << name;
      EXPECT_LT(max_abs_diff(grads_ckpt.at(name), g), 1e-6) << name << " (" << micro << " micro-batches)";
    }
  }
}

} // namespace
} // namespace flora::gpt2
