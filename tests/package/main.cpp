// A user's program: one Flora step through the installed (or vendored)
// library.
#include <flora/flora.h>

#include <torch/torch.h>

#include <cstdio>

int main() {
  auto w = torch::randn({16, 64}, torch::requires_grad());
  flora::Flora optimizer({w}, flora::FloraOptions(1e-2).rank(4).beta1(0.9));
  const auto before = w.detach().clone();
  w.mutable_grad() = torch::randn({16, 64});
  optimizer.step();
  const bool moved = !torch::equal(before, w.detach());
  std::printf("flora %s: one step, %lld state bytes, parameter %s\n", FLORA_VERSION,
              static_cast<long long>(optimizer.state_bytes()), moved ? "updated" : "NOT updated");
  return moved && optimizer.state_bytes() > 0 ? 0 : 1;
}
