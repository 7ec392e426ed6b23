// The launcher's variables: what torchrun sets is accepted, and anything
// missing or malformed is named with its value.

#include "test_util.h"

#include <flora/process_group.h>

#include <cstdlib>

namespace {

using flora::distributed::parse_launch_environment;
using flora::testing::expect_error;

std::map<std::string, std::string> torchrun_like() {
  return {{"RANK", "1"},           {"WORLD_SIZE", "4"},         {"LOCAL_RANK", "1"},
          {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "29500"},
          {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "2"}};
}

TEST(LaunchEnvironment, ReadsWhatTorchrunSets) {
  const auto env = parse_launch_environment(torchrun_like());
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "10.0.0.7");
  EXPECT_EQ(env.master_port, 29500);
  EXPECT_TRUE(env.agent_store);
  EXPECT_EQ(env.restart_count, 2);
}

TEST(LaunchEnvironment, TheAgentStoreIsOnlyForTrue) {
  auto vars = torchrun_like();
  vars.erase("TORCHELASTIC_USE_AGENT_STORE");
  vars.erase("TORCHELASTIC_RESTART_COUNT");
  EXPECT_FALSE(parse_launch_environment(vars).agent_store);
  EXPECT_EQ(parse_launch_environment(vars).restart_count, 0);
  vars["TORCHELASTIC_USE_AGENT_STORE"] = "False";
  EXPECT_FALSE(parse_launch_environment(vars).agent_store);
}

TEST(LaunchEnvironment, NamesEachMissingVariable) {
  for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) {
    auto vars = torchrun_like();
    vars.erase(name);
    expect_error([&] { parse_launch_environment(vars); }, std::string("environment variable ") + name + " is not set");
    vars[name] = "";
    expect_error([&] { parse_launch_environment(vars); }, std::string("environment variable ") + name + " is empty");
  }
}

TEST(LaunchEnvironment, NamesMalformedValues) {
  auto with = [](const std::string& name, const std::string& value) {
    auto vars = torchrun_like();
    vars[name] = value;
    return vars;
  };
  expect_error([&] { parse_launch_environment(with("RANK", "one")); }, "RANK='one' is not an integer");
  expect_error([&] { parse_launch_environment(with("RANK", "3abc")); }, "RANK='3abc' is not an integer");
  expect_error([&] { parse_launch_environment(with("RANK", "4")); }, "RANK=4 must be in [0, WORLD_SIZE) = [0, 4)");
  expect_error([&] { parse_launch_environment(with("RANK", "-1")); }, "RANK=-1 must be in [0, WORLD_SIZE)");
  expect_error([&] { parse_launch_environment(with("WORLD_SIZE", "0")); }, "WORLD_SIZE=0 must be at least 1");
  expect_error(
      [&] { parse_launch_environment(with("WORLD_SIZE", "99999999999999999999")); },
      "WORLD_SIZE='99999999999999999999' is not an integer");
  expect_error([&] { parse_launch_environment(with("LOCAL_RANK", "2")); }, "LOCAL_RANK=2 must be below LOCAL_WORLD_SIZE=2");
  expect_error([&] { parse_launch_environment(with("MASTER_PORT", "70000")); }, "MASTER_PORT=70000 is not a TCP port");
  expect_error([&] { parse_launch_environment(with("MASTER_PORT", "0")); }, "MASTER_PORT=0 is not a TCP port");
  expect_error([&] { parse_launch_environment(with("MASTER_PORT", "29500x")); }, "MASTER_PORT='29500x' is not an integer");
  expect_error(
      [&] { parse_launch_environment(with("TORCHELASTIC_RESTART_COUNT", "x")); },
      "TORCHELASTIC_RESTART_COUNT='x' is not an integer");
}

TEST(LaunchEnvironment, InitFromEnvSaysWhatIsMissing) {
  // This process was not started by a launcher: nothing is set.
  for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) {
    ASSERT_EQ(std::getenv(name), nullptr) << name << " is set in the test's environment";
  }
  expect_error([] { flora::distributed::init_from_env(); }, "the environment variable WORLD_SIZE is not set");
  expect_error([] { flora::distributed::init_from_env(); }, "torchrun sets RANK, WORLD_SIZE, LOCAL_RANK");
}

} // namespace
