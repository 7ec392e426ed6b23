// Quickstart: the same small training run with torch::optim::Adam and with
// flora::Flora, printing the loss and the optimizer-state bytes of each.
//
// The only change from an Adam training loop is the optimizer line:
//
//   - torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
//   + flora::Flora optimizer(model->parameters(), flora::FloraOptions(1e-2).rank(16).beta1(0.9));

#include <torch/torch.h>

#include <flora/flora.h>

#include <chrono>
#include <cstdio>

namespace {

// A 3-layer MLP regressing the outputs of a fixed random "teacher" MLP.
torch::nn::Sequential make_mlp(int64_t width) {
  return torch::nn::Sequential(
      torch::nn::Linear(64, width), torch::nn::Tanh(), torch::nn::Linear(width, width), torch::nn::Tanh(),
      torch::nn::Linear(width, 16));
}

struct Run {
  double first_loss = 0, final_loss = 0, test_loss = 0, ms_per_step = 0;
  int64_t state_bytes = 0;
};

template <typename MakeOptimizer>
Run train(const char* name, MakeOptimizer make_optimizer) {
  torch::manual_seed(0);
  auto teacher = make_mlp(256);
  const auto x = torch::randn({2048, 64});
  const auto x_test = torch::randn({512, 64});
  torch::Tensor y, y_test;
  {
    torch::NoGradGuard no_grad;
    y = teacher->forward(x);
    y_test = teacher->forward(x_test);
  }
  torch::manual_seed(1); // the same student for every optimizer
  auto model = make_mlp(256);
  auto optimizer = make_optimizer(model->parameters());

  const int steps = 300, batch = 256;
  Run run;
  const auto start = std::chrono::steady_clock::now();
  for (int step = 0; step < steps; ++step) {
    const auto idx = torch::randint(0, x.size(0), {batch}, torch::kLong);
    optimizer.zero_grad();
    auto loss = torch::mse_loss(model->forward(x.index_select(0, idx)), y.index_select(0, idx));
    loss.backward();
    optimizer.step();
    if (step == 0) {
      run.first_loss = loss.item<double>();
    }
    if ((step + 1) % 100 == 0) {
      std::printf("  %-6s step %3d  loss %.5f\n", name, step + 1, loss.item<double>());
    }
  }
  run.ms_per_step = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / steps;
  torch::NoGradGuard no_grad;
  run.final_loss = torch::mse_loss(model->forward(x), y).item<double>();
  run.test_loss = torch::mse_loss(model->forward(x_test), y_test).item<double>();
  run.state_bytes = flora::optimizer_state_bytes(optimizer);
  return run;
}

} // namespace

int main() {
  torch::set_num_threads(std::max(1, static_cast<int>(torch::get_num_threads())));
  std::printf("flora %s quickstart: a 64-256-256-16 MLP, 300 steps of batch 256\n", FLORA_VERSION);
  const auto adam = train("adam", [](auto params) { return torch::optim::Adam(params, torch::optim::AdamOptions(1e-3)); });
  const auto flora = train(
      "flora", [](auto params) { return flora::Flora(params, flora::FloraOptions(1e-2).rank(16).beta1(0.9)); });

  std::printf("\n%-28s %12s %12s %12s %14s %10s\n", "optimizer", "first loss", "train loss", "test loss", "state bytes",
              "ms/step");
  std::printf("%-28s %12.5f %12.5f %12.5f %14lld %10.2f\n", "Adam(lr=1e-3)", adam.first_loss, adam.final_loss,
              adam.test_loss, static_cast<long long>(adam.state_bytes), adam.ms_per_step);
  std::printf("%-28s %12.5f %12.5f %12.5f %14lld %10.2f\n", "Flora(lr=1e-2,rank=16,b1=.9)", flora.first_loss,
              flora.final_loss, flora.test_loss, static_cast<long long>(flora.state_bytes), flora.ms_per_step);
  std::printf("\nFlora keeps %.1f%% of Adam's optimizer-state bytes.\n",
              100.0 * static_cast<double>(flora.state_bytes) / static_cast<double>(adam.state_bytes));
  return 0;
}
