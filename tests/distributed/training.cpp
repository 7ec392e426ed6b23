#include "training.h"

namespace flora::dist_test {

namespace {

torch::Tensor draw(torch::IntArrayRef shape, at::Generator& gen, const torch::Device& device) {
  return (torch::randn(shape, gen) * 0.3).to(device);
}

flora::distributed::SynchronizerOptions sync_options(Scenario scenario) {
  auto options = flora::distributed::SynchronizerOptions().bucket_bytes(kBucketBytes);
  switch (scenario) {
    case Scenario::plain_overlap:
      options.overlap(true);
      break;
    case Scenario::plain_sum:
      options.reduction(flora::distributed::Reduction::sum);
      break;
    case Scenario::compressed:
    case Scenario::fused_compressed:
      options.compression_rank(kRank);
      break;
    case Scenario::compressed_overlap:
      options.compression_rank(kRank).overlap(true);
      break;
    default:
      break;
  }
  return options;
}

bool compressed_exchange(Scenario s) {
  return s == Scenario::compressed || s == Scenario::compressed_overlap || s == Scenario::fused_compressed;
}

bool accumulating(Scenario s) {
  return s == Scenario::accumulator || s == Scenario::fused_accumulator;
}

std::vector<torch::Tensor> gradients(const Model& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.params()) {
    out.push_back(p.grad().defined() ? p.grad().detach().cpu().clone() : torch::Tensor());
  }
  return out;
}

// What FusedBackward does to each gradient before its update.
void clip_like_fused(const Model& m, Scenario s) {
  if (!fused(s)) {
    return;
  }
  torch::NoGradGuard no_grad;
  for (auto p : m.params()) {
    if (p.grad().defined()) {
      p.mutable_grad() = p.grad().clamp(-kFusedClip, kFusedClip);
    }
  }
}

} // namespace

bool fused(Scenario s) {
  return s == Scenario::fused_plain || s == Scenario::fused_compressed || s == Scenario::fused_accumulator;
}

Model make_model(uint64_t seed, const torch::Device& device) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Model m;
  m.w1 = draw({24, 16}, gen, device).requires_grad_(true);
  m.b1 = draw({24}, gen, device).requires_grad_(true);
  m.w2 = draw({12, 24}, gen, device).requires_grad_(true);
  m.b2 = draw({12}, gen, device).requires_grad_(true);
  m.emb = draw({60, 12}, gen, device).requires_grad_(true);
  return m;
}

Batch make_batch(int64_t step, int64_t rank, int64_t micro, const torch::Device& device) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(1000003 * step + 1009 * rank + micro));
  Batch b;
  b.x = torch::randn({8, 16}, gen).to(device);
  b.tokens = torch::randint(0, 60, {8}, gen, torch::kLong).to(device);
  b.target = torch::randn({8, 12}, gen).to(device);
  return b;
}

Batch concat(const std::vector<Batch>& batches) {
  std::vector<torch::Tensor> x, tokens, target;
  for (const auto& b : batches) {
    x.push_back(b.x);
    tokens.push_back(b.tokens);
    target.push_back(b.target);
  }
  return {torch::cat(x), torch::cat(tokens), torch::cat(target)};
}

torch::Tensor loss(const Model& m, const Batch& b) {
  const auto h = torch::tanh(torch::addmm(m.b1, b.x, m.w1.t()));
  const auto y = torch::addmm(m.b2, h, m.w2.t()) + m.emb.index_select(0, b.tokens);
  return torch::mse_loss(y, b.target);
}

FloraOptions optimizer_options() {
  return FloraOptions(1e-2).rank(kRank).beta1(0.9).kappa(2).seed(11);
}

std::vector<Scenario> all_scenarios() {
  return {Scenario::plain,       Scenario::plain_sum,   Scenario::plain_overlap,    Scenario::compressed,
          Scenario::compressed_overlap, Scenario::accumulator, Scenario::fused_plain, Scenario::fused_compressed,
          Scenario::fused_accumulator};
}

std::string name(Scenario scenario) {
  switch (scenario) {
    case Scenario::plain:
      return "plain";
    case Scenario::plain_sum:
      return "plain_sum";
    case Scenario::plain_overlap:
      return "plain_overlap";
    case Scenario::compressed:
      return "compressed";
    case Scenario::compressed_overlap:
      return "compressed_overlap";
    case Scenario::accumulator:
      return "accumulator";
    case Scenario::fused_plain:
      return "fused_plain";
    case Scenario::fused_compressed:
      return "fused_compressed";
    case Scenario::fused_accumulator:
      return "fused_accumulator";
  }
  return "unknown";
}

std::vector<torch::Tensor> run_rank(
    Scenario scenario, const flora::distributed::Group& group, const torch::Device& device, RunStats* stats) {
  const int64_t rank = group.rank();
  Model m = make_model(100 + static_cast<uint64_t>(rank), device);
  Flora optimizer(m.params(), optimizer_options());
  const auto options = sync_options(scenario);
  auto record = [&](const flora::distributed::GradientSynchronizer& sync) {
    if (stats) {
      stats->bytes_per_exchange = sync.bytes_per_exchange();
      stats->bytes_exchanged = sync.bytes_exchanged();
      stats->collectives = sync.collectives();
    }
  };
  switch (scenario) {
    case Scenario::plain:
    case Scenario::plain_sum:
    case Scenario::plain_overlap:
    case Scenario::compressed:
    case Scenario::compressed_overlap: {
      flora::distributed::GradientSynchronizer sync(m.params(), group, options);
      sync.broadcast_parameters();
      for (int64_t s = 0; s < kSteps; ++s) {
        optimizer.zero_grad();
        loss(m, make_batch(s, rank, 0, device)).backward();
        sync.synchronize();
        if (s == 0 && stats) {
          stats->first_gradients = gradients(m);
        }
        optimizer.step();
      }
      record(sync);
      break;
    }
    case Scenario::accumulator: {
      CompressedAccumulator acc(m.params(), AccumulationOptions(kRank).seed(kAccumulationSeed));
      flora::distributed::GradientSynchronizer sync(acc, group, options);
      sync.broadcast_parameters();
      for (int64_t s = 0; s < kSteps; ++s) {
        for (int64_t i = 0; i < kMicroBatches; ++i) {
          (loss(m, make_batch(s, rank, i, device)) / kMicroBatches).backward();
          acc.accumulate();
        }
        sync.synchronize();
        acc.restore();
        if (s == 0 && stats) {
          stats->first_gradients = gradients(m);
        }
        optimizer.step();
        optimizer.zero_grad();
      }
      record(sync);
      break;
    }
    case Scenario::fused_plain:
    case Scenario::fused_compressed:
    case Scenario::fused_accumulator: {
      auto fused_options = FusedBackwardOptions().clip_value(kFusedClip);
      if (scenario == Scenario::fused_accumulator) {
        fused_options.accumulation_steps(kMicroBatches).accumulation_rank(kRank).accumulation_seed(kAccumulationSeed);
      }
      FusedBackward fused(optimizer, fused_options);
      flora::distributed::GradientSynchronizer sync(fused, group, options);
      sync.broadcast_parameters();
      const int64_t micro = scenario == Scenario::fused_accumulator ? kMicroBatches : 1;
      for (int64_t s = 0; s < kSteps; ++s) {
        for (int64_t i = 0; i < micro; ++i) {
          (loss(m, make_batch(s, rank, i, device)) / micro).backward(); // updates inside
        }
      }
      record(sync);
      break;
    }
  }
  std::vector<torch::Tensor> out;
  for (const auto& p : m.params()) {
    out.push_back(p.detach().cpu().clone());
  }
  return out;
}

std::vector<torch::Tensor> run_reference(
    Scenario scenario, int64_t world_size, std::vector<torch::Tensor>* first_gradients) {
  Model m = make_model(100); // rank 0's values, which the broadcast spreads
  Flora optimizer(m.params(), optimizer_options());
  const auto w = static_cast<double>(world_size);
  if (compressed_exchange(scenario)) {
    // The identity: mean_k down(G_k) = down(mean_k G_k). The exchange
    // compresses the matrices that the rule admits (w1 and w2; emb's aspect
    // ratio is 5), seeds 0 and 1 advancing every step, exactly as an
    // accumulator over those matrices does over the ranks' batches.
    CompressedAccumulator acc({m.w1, m.w2}, AccumulationOptions(kRank).seed(0));
    for (int64_t s = 0; s < kSteps; ++s) {
      optimizer.zero_grad();
      for (int64_t r = 0; r < world_size; ++r) {
        (loss(m, make_batch(s, r, 0)) / w).backward();
        acc.accumulate(); // releases w1's and w2's; the others sum in .grad
      }
      acc.restore();
      clip_like_fused(m, scenario);
      if (s == 0 && first_gradients) {
        *first_gradients = gradients(m);
      }
      optimizer.step();
    }
  } else if (accumulating(scenario)) {
    // Every rank's micro-batches through one accumulator.
    CompressedAccumulator acc(m.params(), AccumulationOptions(kRank).seed(kAccumulationSeed));
    for (int64_t s = 0; s < kSteps; ++s) {
      for (int64_t r = 0; r < world_size; ++r) {
        for (int64_t i = 0; i < kMicroBatches; ++i) {
          (loss(m, make_batch(s, r, i)) / (kMicroBatches * w)).backward();
          acc.accumulate();
        }
      }
      acc.restore();
      clip_like_fused(m, scenario);
      if (s == 0 && first_gradients) {
        *first_gradients = gradients(m);
      }
      optimizer.step();
      optimizer.zero_grad();
    }
  } else {
    // Plain: the mean gradient is the gradient of the concatenated batch.
    for (int64_t s = 0; s < kSteps; ++s) {
      optimizer.zero_grad();
      std::vector<Batch> batches;
      for (int64_t r = 0; r < world_size; ++r) {
        batches.push_back(make_batch(s, r, 0));
      }
      auto l = loss(m, concat(batches));
      // Reduction::sum: the sum over ranks of each rank's mean-loss gradient.
      (scenario == Scenario::plain_sum ? l * w : l).backward();
      clip_like_fused(m, scenario);
      if (s == 0 && first_gradients) {
        *first_gradients = gradients(m);
      }
      optimizer.step();
    }
  }
  std::vector<torch::Tensor> out;
  for (const auto& p : m.params()) {
    out.push_back(p.detach().clone());
  }
  return out;
}

} // namespace flora::dist_test
