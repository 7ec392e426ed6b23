// flora::Flora's checkpoints: torch's optimizer archive layout (so that
// torch::save / torch::load work) plus a "flora_format" version. load()
// reads every format ever written, validates everything against this
// optimizer's parameters, and only then changes anything.

#include "checkpoint_format.h"
#include "option_fields.h"
#include "param_state.h"
#include "state_fields.h"
#include "step.h"

#include <flora/optimizer.h>

#include <torch/optim/serialize.h>
#include <torch/serialize/archive.h>
#include <torch/torch.h>

#include <algorithm>
#include <set>
#include <sstream>
#include <string>

namespace flora {

void Flora::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<FloraParamState, FloraOptions>(archive, *this);
  archive.write("flora_format", c10::IValue(detail::kCheckpointFormat));
}

namespace {

using detail::StateMap;

std::set<std::string> keys_of(torch::serialize::InputArchive& archive) {
  const auto keys = archive.keys();
  return {keys.begin(), keys.end()};
}

// What an archive without a flora_format entry is, for the error message:
// torch's optimizers are recognised by the option names of their groups.
std::string identify_foreign(torch::serialize::InputArchive& archive) {
  const auto top = keys_of(archive);
  if (top.count("flora_accumulator") != 0) {
    return "a flora::CompressedAccumulator checkpoint (load it with CompressedAccumulator::load)";
  }
  if (top.count("param_groups") == 0) {
    std::ostringstream out;
    out << "not an optimizer checkpoint (no 'param_groups'; its entries are:";
    size_t shown = 0;
    for (const auto& k : top) {
      if (shown++ == 5) {
        out << " ...";
        break;
      }
      out << " '" << k << "'";
    }
    out << ")";
    return out.str();
  }
  std::set<std::string> options;
  try {
    torch::serialize::InputArchive groups, first, first_options;
    archive.read("param_groups", groups);
    groups.read("param_groups/0", first);
    first.read("options", first_options);
    options = keys_of(first_options);
  } catch (const std::exception&) {
    // c10::Error, or torch::jit::ObjectAttributeError (a std::runtime_error)
    // that InputArchive::read throws for a missing nested archive.
    return "an optimizer checkpoint of another library (no 'flora_format' entry)";
  }
  const auto has = [&](std::initializer_list<const char*> names) {
    return std::all_of(names.begin(), names.end(), [&](const char* n) { return options.count(n) != 0; });
  };
  if (has({"betas", "amsgrad"})) {
    return "a torch::optim::Adam or AdamW checkpoint (its param groups have 'betas' and 'amsgrad')";
  }
  if (has({"momentum", "dampening", "nesterov"})) {
    return "a torch::optim::SGD checkpoint (its param groups have 'momentum', 'dampening' and 'nesterov')";
  }
  if (has({"alpha", "centered"})) {
    return "a torch::optim::RMSprop checkpoint (its param groups have 'alpha' and 'centered')";
  }
  if (has({"lr_decay", "initial_accumulator_value"})) {
    return "a torch::optim::Adagrad checkpoint (its param groups have 'lr_decay')";
  }
  if (has({"max_iter", "history_size"})) {
    return "a torch::optim::LBFGS checkpoint (its param groups have 'max_iter' and 'history_size')";
  }
  return "an optimizer checkpoint of another kind (no 'flora_format' entry)";
}

int64_t read_format(torch::serialize::InputArchive& archive) {
  c10::IValue format;
  if (!archive.try_read("flora_format", format)) {
    TORCH_CHECK(false, "Flora::load: this is ", identify_foreign(archive), ", not a flora::Flora checkpoint");
  }
  TORCH_CHECK(
      format.isInt() && format.toInt() >= 1, "Flora::load: 'flora_format' is ", format,
      ", not a checkpoint format version");
  TORCH_CHECK(
      format.toInt() <= detail::kCheckpointFormat, "Flora::load: the checkpoint has format ", format.toInt(),
      ", written by a newer flora; this flora reads formats 1 to ", detail::kCheckpointFormat,
      ". Load it with a newer flora.");
  return format.toInt();
}

using SavedGroups = std::vector<std::pair<std::vector<std::string>, FloraOptions>>;

int64_t read_count(torch::serialize::InputArchive& archive, const std::string& key) {
  torch::Tensor size;
  archive.read(key, size);
  TORCH_CHECK(size.numel() == 1 && !size.is_floating_point(), "'", key, "' is not an integer");
  return size.item<int64_t>();
}

SavedGroups read_groups(torch::serialize::InputArchive& archive, int64_t format) {
  SavedGroups groups;
  const int64_t count = read_count(archive, "param_groups/size");
  TORCH_CHECK(count >= 0, "negative param group count ", count);
  for (int64_t g = 0; g < count; ++g) {
    torch::serialize::InputArchive group;
    archive.read("param_groups/" + std::to_string(g), group);
    const int64_t size = read_count(group, "params/size");
    TORCH_CHECK(size >= 0, detail::group_name(g), " has a negative parameter count ", size);
    std::vector<std::string> keys;
    for (int64_t i = 0; i < size; ++i) {
      c10::IValue key;
      group.read("params/" + std::to_string(i), key);
      TORCH_CHECK(key.isString(), detail::group_name(g), ": parameter key ", i, " is not a string");
      keys.push_back(key.toStringRef());
    }
    torch::serialize::InputArchive options_archive;
    group.read("options", options_archive);
    FloraOptions options;
    detail::read_options(options_archive, format, options);
    groups.emplace_back(std::move(keys), options);
  }
  return groups;
}

// The saved states by the key (the parameter's address when it was saved).
std::map<std::string, FloraParamState> read_states(torch::serialize::InputArchive& archive, int64_t format) {
  std::map<std::string, FloraParamState> states;
  for (const auto& key : archive.keys()) {
    torch::serialize::InputArchive one;
    archive.read(key, one);
    FloraParamState state;
    detail::read_state(one, format, state);
    states.emplace(key, std::move(state));
  }
  return states;
}

// The loaded state must hold exactly the tensors that a state of this
// parameter under these options holds, with the same shapes and dtypes.
void check_loaded_state(
    const FloraParamState& s, const torch::Tensor& param, const FloraOptions& options, const std::string& who) {
  TORCH_CHECK(s.step() >= 0, "Flora::load: ", who, " has a negative step count ", s.step());
  // The fuzz target found 2^63 - 1, which overflowed on the next step.
  TORCH_CHECK(
      s.step() <= detail::kMaxStepCount, "Flora::load: ", who, " has step count ", s.step(),
      ", beyond 2^62: no run takes that many steps (a corrupt checkpoint?)");
  if (s.step() == 0) {
    return; // a fresh state (seed assigned, nothing accumulated yet)
  }
  const auto expected = detail::initial_state(param.sizes(), options, torch::TensorOptions().device(torch::kMeta));
  detail::for_each_state_tensor(
      [&](const detail::FieldInfo& info, const torch::Tensor& actual, const torch::Tensor& want) {
        if (!want.defined()) {
          TORCH_CHECK(!actual.defined(), "Flora::load: ", who, " has an unexpected '", info.key, "' in the checkpoint");
          return;
        }
        TORCH_CHECK(actual.defined(), "Flora::load: ", who, " has no '", info.key, "' in the checkpoint");
        TORCH_CHECK(
            actual.sizes() == want.sizes(), "Flora::load: ", who, ": '", info.key, "' has shape ", actual.sizes(),
            ", expected ", want.sizes(), " (was the checkpoint written for other parameters or options?)");
        TORCH_CHECK(
            actual.scalar_type() == want.scalar_type(), "Flora::load: ", who, ": '", info.key, "' has dtype ",
            actual.scalar_type(), ", expected ", want.scalar_type());
      },
      s, expected);
}

} // namespace

void Flora::load(torch::serialize::InputArchive& archive) {
  // 1. Read everything into temporaries.
  const int64_t format = read_format(archive);
  std::map<std::string, FloraParamState> saved_states;
  SavedGroups saved_groups;
  try {
    torch::serialize::InputArchive state_archive;
    archive.read("state", state_archive);
    saved_states = read_states(state_archive, format);
    torch::serialize::InputArchive groups_archive;
    archive.read("param_groups", groups_archive);
    saved_groups = read_groups(groups_archive, format);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "Flora::load: not a readable flora::Flora checkpoint: ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    // LibTorch's archive reader throws some errors that are not c10::Error:
    // InputArchive::read of a missing entry (e.g. a group without
    // 'params/0') throws torch::jit::ObjectAttributeError, a
    // std::runtime_error. Found by tests/fuzz (optimizer_checkpoint).
    TORCH_CHECK(false, "Flora::load: not a readable flora::Flora checkpoint: ", e.what());
  }

  // 2. Validate against this optimizer's parameters.
  TORCH_CHECK(
      saved_groups.size() == param_groups_.size(), "Flora::load: the checkpoint has ", saved_groups.size(),
      " param groups, this optimizer ", param_groups_.size());
  StateMap next_state;
  int64_t index = 0;
  for (size_t g = 0; g < saved_groups.size(); ++g) {
    const auto& [keys, options] = saved_groups[g];
    const auto& params = param_groups_[g].params();
    TORCH_CHECK(
        keys.size() == params.size(), "Flora::load: ", detail::group_name(g), " has ", keys.size(),
        " parameters in the checkpoint, ", params.size(), " in this optimizer");
    const std::string where = "Flora::load: " + detail::group_name(g);
    validate(options, where.c_str());
    for (size_t i = 0; i < params.size(); ++i) {
      ++index;
      const auto found = saved_states.find(keys[i]);
      if (found == saved_states.end()) {
        continue;
      }
      check_loaded_state(found->second, params[i], options, detail::describe_parameter(index, g, i, params[i]));
      auto moved = std::make_unique<FloraParamState>(found->second);
      const auto device = params[i].device();
      detail::for_each_state_tensor(
          [&](const detail::FieldInfo&, torch::Tensor& t) {
            if (t.defined()) {
              t = t.to(device);
            }
          },
          *moved);
      next_state[params[i].unsafeGetTensorImpl()] = std::move(moved);
    }
  }

  // 3. Commit (nothing below throws).
  state_ = std::move(next_state);
  for (size_t g = 0; g < saved_groups.size(); ++g) {
    static_cast<FloraOptions&>(param_groups_[g].options()) = saved_groups[g].second;
  }
}

} // namespace flora
