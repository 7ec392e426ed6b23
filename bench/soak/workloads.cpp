// The soak benchmark's two workloads.

#include "soak.h"

#include "data.h"
#include "pretrained.h"
#include "tokenizer.h"

namespace flora::soak {
namespace {

// tests/training_test.cpp's problem: a 32-64-64-8 tanh MLP learning a
// teacher of the same shape, full batch of 512, held-out set of 256.
struct TanhMlp : torch::nn::Module {
  TanhMlp() {
    a = register_module("a", torch::nn::Linear(32, 64));
    b = register_module("b", torch::nn::Linear(64, 64));
    c = register_module("c", torch::nn::Linear(64, 8));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return c(torch::tanh(b(torch::tanh(a(x)))));
  }
  torch::nn::Linear a{nullptr}, b{nullptr}, c{nullptr};
};

class Mlp final : public Workload {
 public:
  explicit Mlp(torch::Dtype dtype) : dtype_(dtype) {
    torch::manual_seed(0);
    TanhMlp teacher;
    x_ = torch::randn({512, 32});
    x_test_ = torch::randn({256, 32});
    {
      torch::NoGradGuard no_grad;
      y_ = teacher.forward(x_);
      y_test_ = teacher.forward(x_test_);
    }
    torch::manual_seed(1); // the same student for every run
    student_ = std::make_shared<TanhMlp>();
    student_->to(dtype);
  }
  std::vector<torch::Tensor> parameters() override {
    return student_->parameters();
  }
  torch::Tensor train_loss(int64_t) override {
    return torch::mse_loss(student_->forward(x_.to(dtype_)).to(torch::kFloat), y_);
  }
  double eval_loss() override {
    torch::NoGradGuard no_grad;
    return torch::mse_loss(student_->forward(x_test_.to(dtype_)).to(torch::kFloat), y_test_).item<double>();
  }

 private:
  torch::Dtype dtype_;
  torch::Tensor x_, y_, x_test_, y_test_;
  std::shared_ptr<TanhMlp> student_;
};

std::string shipped(const std::string& relative) {
  return std::string(FLORA_GPT2_SOURCE_DIR) + "/" + relative;
}

struct Corpus {
  torch::Tensor train, valid;
};

const Corpus& corpus() {
  static const Corpus c = [] {
    const auto tokenizer = gpt2::Tokenizer::from_dir(shipped("assets/tiny-gpt2"));
    return Corpus{
        gpt2::encode_files(tokenizer, {shipped("data/train.txt")}),
        gpt2::encode_files(tokenizer, {shipped("data/valid.txt")})};
  }();
  return c;
}

class Gpt2 final : public Workload {
 public:
  Gpt2(torch::Dtype dtype, int64_t batch, int64_t block)
      : model_(gpt2::load_pretrained(shipped("assets/tiny-gpt2"), dtype)),
        sampler_(corpus().train, block, batch, /*seed=*/1234) {
    auto [inputs, targets] = gpt2::eval_blocks(corpus().valid, block, /*max_blocks=*/64);
    eval_inputs_ = inputs;
    eval_targets_ = targets;
  }
  std::vector<torch::Tensor> parameters() override {
    return model_->parameters();
  }
  torch::Tensor train_loss(int64_t) override {
    auto [inputs, targets] = sampler_.next(); // the same sequence for every run
    return model_->loss(inputs, targets);
  }
  double eval_loss() override {
    torch::NoGradGuard no_grad;
    double total = 0;
    const int64_t n = eval_inputs_.size(0);
    for (int64_t i = 0; i < n; i += 16) {
      const int64_t len = std::min<int64_t>(16, n - i);
      total += model_->loss(eval_inputs_.narrow(0, i, len), eval_targets_.narrow(0, i, len)).item<double>() * len;
    }
    return total / static_cast<double>(n);
  }

 private:
  gpt2::GPT2LMHeadModel model_;
  gpt2::BatchSampler sampler_;
  torch::Tensor eval_inputs_, eval_targets_;
};

} // namespace

std::unique_ptr<Workload> make_mlp(torch::Dtype dtype) {
  return std::make_unique<Mlp>(dtype);
}

std::unique_ptr<Workload> make_gpt2(torch::Dtype dtype, int64_t batch, int64_t block) {
  return std::make_unique<Gpt2>(dtype, batch, block);
}

} // namespace flora::soak
