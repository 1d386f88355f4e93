// libFuzzer target: kvgated's configuration file, as text format or JSON
// (kvgated --config), through ResolveServerConfig (plugin/server/config.h).
//
// Files the configuration names are not followed outside tests/data: a
// model's config_path without a '/' names a file of tests/data/models (so
// seeds can load real configs); any other path, and every token_file, is
// sent to a directory that does not exist, so the fuzzer never reads
// /dev/zero or a FIFO.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "kvgate/v1/config.pb.h"
#include "plugin/server/config.h"

namespace {

constexpr char kMissingDir[] = "/nonexistent-kvgate-fuzz/";

// Discards parse errors (protobuf would log each one to stderr).
class QuietErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int, int, const std::string&) override {}
  void AddWarning(int, int, const std::string&) override {}
};

std::string Confined(const std::string& path, bool model) {
  if (path.empty()) return path;
  if (model && !absl::StrContains(path, '/') && path != "." && path != "..") {
    return absl::StrCat(KVGATE_TEST_DATA_DIR, "/models/", path);
  }
  return absl::StrCat(kMissingDir, "file");
}

void ConfineFiles(kvgate::v1::ServerConfig& config) {
  for (auto& model : *config.mutable_models()) {
    model.set_config_path(Confined(model.config_path(), /*model=*/true));
  }
  if (config.has_auth()) {
    for (auto& token : *config.mutable_auth()->mutable_tokens()) {
      token.set_token_file(Confined(token.token_file(), /*model=*/false));
    }
  }
}

void Resolve(kvgate::v1::ServerConfig& config) {
  ConfineFiles(config);
  (void)kvgate::ResolveServerConfig(config);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);

  kvgate::v1::ServerConfig from_text;
  google::protobuf::TextFormat::Parser parser;
  QuietErrors errors;
  parser.RecordErrorsTo(&errors);
  if (parser.ParseFromString(text, &from_text)) Resolve(from_text);

  kvgate::v1::ServerConfig from_json;
  if (google::protobuf::util::JsonStringToMessage(text, &from_json).ok()) {
    Resolve(from_json);
  }
  return 0;
}
