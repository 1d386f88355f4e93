#include "plugin/ext_proc/ext_proc_options.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace kvgate {
namespace {

// Largest body kvgated agrees to buffer per request.
constexpr uint64_t kMaxBodyBytesLimit = uint64_t{1} << 30;
constexpr absl::Duration kMaxHoldLimit = absl::Minutes(10);

absl::Status HeaderName(const std::string& field, const std::string& value,
                        std::string& out) {
  if (value.empty()) return absl::OkStatus();
  if (value.find_first_of(" :\t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ext_proc.", field, ": '", value, "' is not an HTTP header name"));
  }
  out = absl::AsciiStrToLower(value);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ExtProcOptions> ResolveExtProcConfig(
    const kvgate::v1::ExtProcConfig& config, absl::Duration default_max_hold) {
  ExtProcOptions options;
  options.listen_address = config.listen_address();
  options.default_max_tokens = config.default_max_tokens();
  options.trust_token_count_header = config.trust_token_count_header();
  if (config.bytes_per_token() != 0) {
    if (!std::isfinite(config.bytes_per_token()) ||
        config.bytes_per_token() < 0 || config.bytes_per_token() > 1024) {
      return absl::InvalidArgumentError(
          "ext_proc.bytes_per_token: must be in (0, 1024]");
    }
    options.bytes_per_token = config.bytes_per_token();
  }
  if (absl::Status s = HeaderName("tenant_header", config.tenant_header(),
                                  options.tenant_header);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = HeaderName("priority_header", config.priority_header(),
                                  options.priority_header);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          HeaderName("token_count_header", config.token_count_header(),
                     options.token_count_header);
      !s.ok()) {
    return s;
  }
  if (config.max_body_bytes() != 0) {
    if (config.max_body_bytes() > kMaxBodyBytesLimit) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ext_proc.max_body_bytes: at most ", kMaxBodyBytesLimit));
    }
    options.max_body_bytes = config.max_body_bytes();
  }
  options.max_hold = default_max_hold;
  if (config.has_max_hold()) {
    options.max_hold = absl::Seconds(config.max_hold().seconds()) +
                       absl::Nanoseconds(config.max_hold().nanos());
  }
  if (options.max_hold <= absl::ZeroDuration() ||
      options.max_hold > kMaxHoldLimit) {
    return absl::InvalidArgumentError("ext_proc.max_hold: must be in (0, 10m]");
  }
  return options;
}

}  // namespace kvgate
