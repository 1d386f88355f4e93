#include "plugin/memory/metrics_fetcher.h"

#include <curl/curl.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace kvgate {

struct MetricsFetcher::Handle {
  ~Handle() {
    if (curl != nullptr) curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
  }

  // CURLOPT_WRITEFUNCTION: appends to the body, or aborts the transfer (by
  // taking fewer bytes than offered) once the body would exceed max_bytes.
  static size_t AppendBody(char* data, size_t size, size_t count, void* user) {
    auto* handle = static_cast<Handle*>(user);
    const size_t bytes = size * count;
    if (bytes > handle->max_bytes - handle->body.size()) {
      handle->over_limit = true;
      return 0;
    }
    handle->body.append(data, bytes);
    return bytes;
  }

  CURL* curl = nullptr;
  curl_slist* headers = nullptr;
  // libcurl's detail on the last failure (e.g. "Failed to connect to ...").
  char error[CURL_ERROR_SIZE] = {};
  // The body of the transfer in progress, at most max_bytes.
  std::string body;
  size_t max_bytes = 0;
  // Set when the body went over max_bytes and the transfer was aborted.
  bool over_limit = false;
};

namespace {

// libcurl must be initialized once per process before any other call, and
// curl_global_init itself is not safe to run concurrently. A function-local
// static runs it exactly once, whichever thread gets here first (its
// initialization is thread-safe since C++11); that static is the only
// process-wide state here. curl_global_cleanup is never called: another
// thread may still be fetching while the process exits.
absl::Status InitCurlOnce() {
  static const CURLcode init = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (init != CURLE_OK) {
    return absl::InternalError(
        absl::StrCat("curl_global_init: ", curl_easy_strerror(init)));
  }
  return absl::OkStatus();
}

// InvalidArgument unless `url` parses as an http:// URL with a host.
absl::Status CheckUrl(const std::string& url) {
  std::unique_ptr<CURLU, void (*)(CURLU*)> parsed(curl_url(), curl_url_cleanup);
  if (parsed == nullptr) return absl::InternalError("curl_url: out of memory");
  const std::string what = absl::StrCat("metrics URL \"", url, "\": ");
  CURLUcode rc = curl_url_set(parsed.get(), CURLUPART_URL, url.c_str(), 0);
  if (rc != CURLUE_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, curl_url_strerror(rc)));
  }
  char* part = nullptr;
  rc = curl_url_get(parsed.get(), CURLUPART_SCHEME, &part, 0);
  const bool http = rc == CURLUE_OK && std::string(part) == "http";
  curl_free(part);
  if (!http) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, "not http:// (the engine's page is read over plain HTTP)"));
  }
  part = nullptr;
  rc = curl_url_get(parsed.get(), CURLUPART_HOST, &part, 0);
  bool host = rc == CURLUE_OK && part[0] != '\0';
  curl_free(part);
  // libcurl reads "http:///metrics" as host "metrics"; the authority, from
  // "//" to the path, must not be empty.
  const size_t slashes = url.find("://");
  host = host && slashes != std::string::npos && slashes + 3 < url.size() &&
         std::string("/?#").find(url[slashes + 3]) == std::string::npos;
  if (!host) return absl::InvalidArgumentError(absl::StrCat(what, "no host"));
  return absl::OkStatus();
}

absl::Status CheckOptions(const MetricsFetcher::Options& options) {
  if (absl::Status url = CheckUrl(options.url); !url.ok()) return url;
  if (options.timeout < absl::Milliseconds(1) ||
      options.timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics fetch timeout ", absl::FormatDuration(options.timeout),
        ": must be at least 1ms and finite"));
  }
  if (options.max_bytes == 0) {
    return absl::InvalidArgumentError("metrics fetch max_bytes must be >= 1");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsFetcher>> MetricsFetcher::Create(
    Options options) {
  if (absl::Status init = InitCurlOnce(); !init.ok()) return init;
  if (absl::Status valid = CheckOptions(options); !valid.ok()) return valid;
  auto handle = std::make_unique<Handle>();
  handle->curl = curl_easy_init();
  handle->headers = curl_slist_append(nullptr, "Accept: text/plain");
  if (handle->curl == nullptr || handle->headers == nullptr) {
    return absl::InternalError("curl_easy_init: out of memory");
  }
  handle->max_bytes = options.max_bytes;
  const long timeout_ms = static_cast<long>(  // NOLINT(runtime/int): libcurl
      std::min<int64_t>(absl::ToInt64Milliseconds(options.timeout), LONG_MAX));
  const curl_off_t max_bytes =
      static_cast<curl_off_t>(std::min<uint64_t>(options.max_bytes, INT64_MAX));
  CURL* curl = handle->curl;
  // Every option is set; the first failure, if any, is reported.
  CURLcode rc = CURLE_OK;
  for (CURLcode set : {
           curl_easy_setopt(curl, CURLOPT_URL, options.url.c_str()),
           curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http"),
           curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L),
           // An empty proxy ignores http_proxy and the like.
           curl_easy_setopt(curl, CURLOPT_PROXY, ""),
           // No SIGALRM for timeouts: kvgated has other threads.
           curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L),
           curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms),
           curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms),
           curl_easy_setopt(curl, CURLOPT_HTTPHEADER, handle->headers),
           curl_easy_setopt(curl, CURLOPT_USERAGENT, "kvgated"),
           // Refuses at once a body whose Content-Length is over the limit.
           curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, max_bytes),
           curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Handle::AppendBody),
           curl_easy_setopt(curl, CURLOPT_WRITEDATA, handle.get()),
           curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, handle->error),
       }) {
    if (rc == CURLE_OK) rc = set;
  }
  if (rc != CURLE_OK) {
    return absl::InternalError(
        absl::StrCat("curl_easy_setopt: ", curl_easy_strerror(rc)));
  }
  return std::unique_ptr<MetricsFetcher>(
      new MetricsFetcher(std::move(options), std::move(handle)));
}

MetricsFetcher::MetricsFetcher(Options options, std::unique_ptr<Handle> handle)
    : options_(std::move(options)), handle_(std::move(handle)) {}

MetricsFetcher::~MetricsFetcher() = default;

absl::StatusOr<std::string> MetricsFetcher::Fetch() {
  Handle& handle = *handle_;
  handle.body.clear();
  handle.over_limit = false;
  handle.error[0] = '\0';
  const CURLcode rc = curl_easy_perform(handle.curl);
  const std::string where = absl::StrCat("GET ", options_.url, ": ");
  if (handle.over_limit || rc == CURLE_FILESIZE_EXCEEDED) {
    return absl::ResourceExhaustedError(absl::StrCat(
        where, "body over max_bytes (", options_.max_bytes, " bytes)"));
  }
  if (rc != CURLE_OK) {
    std::string cause = curl_easy_strerror(rc);
    if (handle.error[0] != '\0') absl::StrAppend(&cause, ": ", handle.error);
    return absl::UnavailableError(absl::StrCat(where, cause));
  }
  long status = 0;  // NOLINT(runtime/int): libcurl's type
  curl_easy_getinfo(handle.curl, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) {
    return absl::UnavailableError(absl::StrCat(where, "HTTP ", status));
  }
  std::string body = std::move(handle.body);
  handle.body = std::string();
  return body;
}

}  // namespace kvgate
