// The `kvgate estimate` command-line contract and the CLI's handling of bad
// input, run against the built binary.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/tools/cli_runner.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::SizeIs;
using ::testing::StartsWith;

const std::string kData = KVGATE_TEST_DATA_DIR;

nlohmann::json ParseJson(const CliResult& r) {
  nlohmann::json j = nlohmann::json::parse(r.stdout_text, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.stdout_text;
  return j;
}

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// Every model with published facts: the CLI's JSON carries them exactly.
TEST(EstimateCliTest, JsonMatchesPublishedFactsForEveryModel) {
  std::ifstream in(kData + "/models/facts.json");
  const nlohmann::json facts = nlohmann::json::parse(in);
  ASSERT_FALSE(facts.empty());
  for (const auto& [name, f] : facts.items()) {
    CliResult r =
        RunCli({"estimate", "--config=" + kData + "/models/" + name + ".json",
                "--json"});
    ASSERT_EQ(r.exit_code, 0) << name << ": " << r.stderr_text;
    const nlohmann::json j = ParseJson(r);
    EXPECT_EQ(j["parameters"], f["parameters"]) << name;
    EXPECT_EQ(j["active_parameters"], f["active_parameters"]) << name;
    EXPECT_EQ(j["kv_cache_bytes_per_token"],
              f["kv_cache_bytes_per_token_16bit"])
        << name;
  }
}

TEST(EstimateCliTest, JsonHasTheContractFieldsAndTheyAddUp) {
  CliResult r = RunCli({"estimate", "--config=llama-3-8b", "--batch=4",
                        "--prompt-tokens=1000", "--max-new-tokens=24",
                        "--block-size=16", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  const nlohmann::json j = ParseJson(r);
  for (const char* key : {"parameters", "active_parameters", "weights_bytes",
                          "kv_cache_bytes_per_token", "kv_cache_bytes",
                          "activation_bytes", "total_bytes"}) {
    ASSERT_TRUE(j.contains(key)) << key;
    EXPECT_TRUE(j[key].is_number_unsigned()) << key;
  }
  // 1024 tokens per sequence are exactly 64 blocks of 16.
  EXPECT_EQ(j["kv_cache_bytes"].get<uint64_t>(), 4ull * 1024 * 131072);
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(),
            j["weights_bytes"].get<uint64_t>() +
                j["kv_cache_bytes"].get<uint64_t>() +
                j["activation_bytes"].get<uint64_t>());
}

TEST(EstimateCliTest, FlagsChangeTheEstimate) {
  auto kv = [](std::vector<std::string> extra) {
    std::vector<std::string> args = {"estimate", "--config=llama-3-8b",
                                     "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
    return nlohmann::json::parse(r.stdout_text);
  };
  const uint64_t bf16 = kv({})["kv_cache_bytes"];
  EXPECT_EQ(kv({"--kv-cache-dtype=fp8"})["kv_cache_bytes"].get<uint64_t>(),
            bf16 / 2);
  EXPECT_EQ(kv({"--tensor-parallel=2"})["kv_cache_bytes"].get<uint64_t>(),
            bf16 / 2);
  EXPECT_LT(kv({"--dtype=int4"})["weights_bytes"].get<uint64_t>(),
            kv({})["weights_bytes"].get<uint64_t>() / 2);
  EXPECT_GT(
      kv({"--attention=eager", "--prompt-tokens=8000"})["activation_bytes"]
          .get<uint64_t>(),
      kv({"--prompt-tokens=8000"})["activation_bytes"].get<uint64_t>());
}

// vLLM V1 always chunks prefill at --max-num-batched-tokens (8192 by
// default): the default estimate reserves one 8192-token step's activations,
// not the whole 32k prompt's; 0 turns chunking off.
TEST(EstimateCliTest, PrefillIsChunkedAtVllmsBatchedTokensByDefault) {
  auto activation = [](const std::string& extra) {
    std::vector<std::string> args = {"estimate", "--config=qwen2.5-7b",
                                     "--prompt-tokens=32000", "--json"};
    if (!extra.empty()) args.push_back(extra);
    CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
    return nlohmann::json::parse(r.stdout_text)["activation_bytes"]
        .get<uint64_t>();
  };
  const uint64_t by_default = activation("");
  EXPECT_EQ(by_default, activation("--chunked-prefill-tokens=8192"));
  EXPECT_GT(activation("--chunked-prefill-tokens=0"), 3 * by_default);
}

TEST(EstimateCliTest, TableByDefaultAndHelp) {
  CliResult r = RunCli({"estimate", "--config=gpt2"});
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_THAT(r.stdout_text, HasSubstr("124439808"));
  EXPECT_THAT(r.stdout_text, HasSubstr("total / GPU"));
  CliResult help = RunCli({"estimate", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.stdout_text, HasSubstr("--kv-cache-dtype"));
  CliResult top = RunCli({"--help"});
  EXPECT_EQ(top.exit_code, 0);
  EXPECT_THAT(top.stdout_text, HasSubstr("estimate"));
}

// Bad input: exit 2 with exactly one line on stderr that names the problem,
// nothing on stdout, never a crash.
TEST(EstimateCliTest, BadInputExitsTwoWithOneClearLine) {
  const std::string malformed =
      WriteTemp("malformed.json", "{\"hidden_size\": ");
  const std::string not_object = WriteTemp("array.json", "[1, 2]");
  const std::string missing_field = WriteTemp(
      "nolayers.json",
      "{\"hidden_size\": 64, \"num_attention_heads\": 4, \"vocab_size\": 10,"
      " \"intermediate_size\": 128}");
  const std::string negative =
      WriteTemp("negative.json",
                "{\"hidden_size\": -64, \"num_hidden_layers\": 2, "
                "\"num_attention_heads\": 4, \"vocab_size\": 10}");
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"estimate"}, "--config is required"},
      {{"estimate", "--config=/nonexistent/config.json"}, "cannot read"},
      {{"estimate", "--config=" + malformed}, "not valid JSON"},
      {{"estimate", "--config=" + not_object}, "JSON object"},
      {{"estimate", "--config=" + missing_field}, "num_hidden_layers"},
      {{"estimate", "--config=" + negative}, "hidden_size"},
      {{"estimate", "--config=gpt2", "--batch=-1"}, "--batch"},
      {{"estimate", "--config=gpt2", "--batch=0"}, "--batch"},
      {{"estimate", "--config=gpt2", "--prompt-tokens=0"}, "--prompt-tokens"},
      {{"estimate", "--config=gpt2", "--batch=99999999999999999999999"},
       "--batch"},
      {{"estimate", "--config=gpt2", "--prompt-tokens=5000000000"},
       "--prompt-tokens"},
      {{"estimate", "--config=gpt2", "--batch=abc"}, "--batch"},
      {{"estimate", "--config=gpt2", "--dtype=fp7"}, "fp7"},
      {{"estimate", "--config=gpt2", "--kv-cache-dtype=int4"},
       "KV-cache dtype"},
      {{"estimate", "--config=gpt2", "--attention=magic"}, "--attention"},
      {{"estimate", "--config=gpt2", "--tensor-parallel=0"},
       "--tensor-parallel"},
      {{"estimate", "--config=gpt2", "--tensor-parallel=5"}, "tensor parallel"},
      {{"estimate", "--config=gpt2", "--block-size=0"}, "--block-size"},
      {{"estimate", "--config=gpt2", "--no-such-flag"}, "unknown flag"},
      {{"estimate", "--config=gpt2", "stray"}, "unexpected argument"},
      {{"estimate", "--config"}, "needs a value"},
      {{"no-such-command"}, "unknown command"},
  };
  for (const Case& c : cases) {
    CliResult r = RunCli(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args.back() << ": " << r.stderr_text;
    EXPECT_THAT(Lines(r.stderr_text), SizeIs(1)) << c.args.back();
    EXPECT_THAT(r.stderr_text, HasSubstr(c.says)) << c.args.back();
    EXPECT_EQ(r.stdout_text, "") << c.args.back();
  }
}

// Sizes whose products overflow 64 bits are an error, not a wrapped number.
TEST(EstimateCliTest, OverflowingSizesAreRejected) {
  for (const char* batch : {"--batch=4294967296", "--batch=1048576"}) {
    CliResult r = RunCli({"estimate", "--config=llama-3-8b", batch,
                          "--prompt-tokens=4294967295",
                          "--max-new-tokens=4294967295", "--json"});
    EXPECT_EQ(r.exit_code, 2) << batch << r.stdout_text;
    EXPECT_THAT(Lines(r.stderr_text), SizeIs(1)) << batch;
    EXPECT_EQ(r.stdout_text, "") << batch;
  }
}

// --config takes a Hugging Face snapshot directory and reads its
// config.json.
TEST(EstimateCliTest, ConfigAcceptsASnapshotDirectory) {
  const std::string dir = testing::TempDir() + "/snapshot-gpt2";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kData + "/models/gpt2.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  CliResult r = RunCli({"estimate", "--config=" + dir, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(ParseJson(r)["parameters"].get<uint64_t>(), 124439808u);
}

// A mistyped preset: the error suggests the nearest name.
TEST(EstimateCliTest, UnknownPresetSuggestsTheNearestName) {
  CliResult r = RunCli({"estimate", "--config=lama-3-8b"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.stderr_text, HasSubstr("did you mean 'llama-3-8b'?"));
  EXPECT_THAT(r.stderr_text, HasSubstr("presets: "));
}

// A size no model comes near is refused, naming the field, before any
// figure is computed from it.
TEST(EstimateCliTest, AbsurdSizesAreRejectedNamingTheField) {
  for (const auto& [field, value] :
       std::vector<std::pair<std::string, std::string>>{
           {"hidden_size", "4000000000"},
           {"num_hidden_layers", "1000000"},
           {"vocab_size", "100000000000"}}) {
    std::ifstream in(kData + "/models/Meta-Llama-3-8B.json");
    nlohmann::json config = nlohmann::json::parse(in);
    config[field] = nlohmann::json::parse(value);
    const std::string path =
        WriteTemp("absurd-" + field + ".json", config.dump());
    CliResult r = RunCli({"estimate", "--config=" + path});
    EXPECT_EQ(r.exit_code, 2) << field;
    EXPECT_THAT(r.stderr_text, HasSubstr(field + " " + value)) << field;
    EXPECT_THAT(r.stderr_text, HasSubstr("not a plausible")) << field;
    EXPECT_EQ(r.stdout_text, "");
  }
}

TEST(EstimateCliTest, VersionPrintsTheRelease) {
  CliResult r = RunCli({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.stdout_text, StartsWith("kvgate 0."));
}

// --quick speaks of rules of thumb, never of the project's internal names
// for where they came from.
TEST(EstimateCliTest, QuickSpeaksOfRulesOfThumbNotInternalSources) {
  for (const char* command : {"estimate", "train"}) {
    CliResult table = RunCli({command, "--config=gpt2", "--quick"});
    ASSERT_EQ(table.exit_code, 0) << table.stderr_text;
    EXPECT_THAT(table.stdout_text, HasSubstr("of thumb")) << command;
    EXPECT_THAT(table.stdout_text, Not(HasSubstr("seed"))) << command;
    CliResult json = RunCli({command, "--config=gpt2", "--quick", "--json"});
    ASSERT_EQ(json.exit_code, 0) << json.stderr_text;
    const std::string source = ParseJson(json)["rules_of_thumb"]["source"];
    EXPECT_THAT(source, StartsWith("rules of thumb")) << command;
    EXPECT_THAT(source, Not(HasSubstr("seed"))) << command;
    CliResult help = RunCli({command, "--help"});
    EXPECT_THAT(help.stdout_text, Not(HasSubstr("seed"))) << command;
  }
}

}  // namespace
}  // namespace kvgate
